"""The measuring side of the target screen: one deployment setting, built from the baseline's
weights without fine-tuning, measured briefly on the target.

Latency, peak memory and weight bytes do not depend on fine-tuning, so the screen can learn
what a precision, memory format, quantization and runtime do on this target in seconds per
setting, where a trial takes minutes. It runs in the trial worker process (objectives/worker.py
serves the request), so the driver's hard per-setting timeout can kill a setting that hangs.
The driver's side (search/screen/) decides what the figures mean.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from torch import nn

from slimtune.spaces import Recipe
from slimtune.spaces.precision import math_mode

from .accuracy import accuracy_scores
from .evaluator import TrialStopped
from .latency import measure_latency
from .memory import peak_inference_bytes, weight_bytes

MB = 1e6
#: a screen measurement ranks settings; it need not be a trial's careful figure
WARMUP, REPEATS, MAX_SECONDS = 3, 15, 1.0


def weight_layers(model: nn.Module) -> int:
    """Layers with a weight quantization could touch (convolutions and linear layers): the
    denominator of "quantizes 1 of 21 weight layers"."""
    return sum(isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) for module in model.modules())


@contextlib.contextmanager
def _own_timeout(timeout_s: float) -> Iterator[None]:
    """The evaluator's cooperative stop names the trial's limit; here the setting's applies."""
    try:
        yield
    except TrialStopped as error:
        _, _, stage = str(error).partition(" during ")
        raise TrialStopped(f"timeout: over setting_timeout_s={timeout_s:g}" + (f" during {stage}" if stage else "")) from error


def measure_setting(evaluator: Any, recipe: Recipe, *, accuracy: bool, timeout_s: float,
                    on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build `recipe` from the baseline (its prune ratio applied, nothing fine-tuned) and
    measure it as deployed: latency, peak memory, weight bytes, how many weight layers its
    quantization touched, and, when `accuracy`, top-1 and balanced accuracy on the held-out
    split (one pass). Raises whatever
    the build or the run raises (the driver records it as the setting's reason); stops
    cooperatively past `timeout_s` (the driver kills the worker if that does not work)."""
    stage = on_stage or (lambda name: None)
    started = time.perf_counter()
    # the evaluator's own deadline is what its knobs' check_time() reads while building
    evaluator._deadline = started + timeout_s
    try:
        with _own_timeout(timeout_s), math_mode(recipe.precision):
            candidate = evaluator.build(recipe, 0, stage)
            held_out = None
            if accuracy:
                stage("accuracy")
                held_out = accuracy_scores(candidate, evaluator.workload.data.val, evaluator.batch_size,
                                           evaluator.device, prepare=candidate.inputs)
                evaluator.check_time("accuracy")
            example = candidate.inputs(evaluator.example(evaluator.batch_size))
            stage("latency")
            remaining = max(0.2, evaluator._deadline - time.perf_counter())
            stats = measure_latency(candidate, example, warmup=WARMUP, repeats=REPEATS,
                                    max_seconds=min(MAX_SECONDS, remaining), min_repeats=5)
            evaluator.check_time("latency")
            stage("memory")
            peak = peak_inference_bytes(candidate.deployed, candidate.model, example)
    finally:
        del evaluator._deadline
    record = candidate.record
    return {
        "latency_ms": stats.median_ms,
        "latency_p95_ms": stats.p95_ms,
        "peak_memory_mb": peak / MB,
        "weight_mb": weight_bytes(candidate.model) / MB,
        "accuracy": None if held_out is None else held_out.accuracy,
        "balanced_accuracy": None if held_out is None else held_out.balanced_accuracy,
        "quantized_layers": len(record.get("quantized_layers", [])),
        "weight_layers": weight_layers(candidate.model),
        "compile_s": record.get("compile_s"),
        "seconds": time.perf_counter() - started,
    }
