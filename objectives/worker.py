"""The worker process: loads the workload, data and baseline once, then measures recipes sent
by the driver until the driver says stop or goes away.

It runs in a process of its own (spawned, so CUDA is safe) because a trial can hang in a
compiler, crash the process, or leave the CUDA context broken; the driver kills and replaces
the worker then, and the study goes on. The worker never touches storage: it answers with
plain messages on a pipe.

Messages from the driver: ("load",) ("baseline",) ("evaluate", recipe_dict, seed)
("check", recipe_dict) ("export", recipe_dict, seed, format, folder) ("screen", recipe_dict, accuracy, timeout_s)
("confirm", [recipe_dict, ...], [seed, ...], rounds) ("test", [recipe_dict, ...], [seed, ...]) ("stop",). Messages to the driver: ("log", text) ("stage", name)
("warning", line) (each third-party warning once, see spaces/warnings_once.py)
("loaded", info) ("ready", info) ("result", measurement_dict) ("stopped", reason)
("failed", reason, restart) ("error", field, message, traceback or None) for bad input.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

#: a factory builds the evaluator from the spec; tests name one that injects faults
DEFAULT_FACTORY = "slimtune.objectives.worker:make_evaluator"


@dataclass
class WorkerSpec:
    """Everything a worker needs, as plain data (it crosses a process boundary)."""

    model: str
    data: str
    input_shape: tuple[int, ...]
    data_root: str | None
    device: str
    threads: int | None
    batch_sizes: tuple[int, ...]
    budget: dict[str, Any]
    max_accuracy_drop: float | None
    space: dict[str, Any]
    checkpoint: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    inductor_cache_dir: str | None = None
    factory: str = DEFAULT_FACTORY
    max_balanced_accuracy_drop: float | None = None
    #: the share of the training data carved as the validation split (objectives/splits.py);
    #: None: trials are judged on the loader's held-out split (no test split)
    validation_share: float | None = None
    #: the level of the drops' paired intervals (the study's `confidence`, else 0.95)
    ci_level: float = 0.95


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the driver dies, even with SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def pin_to_cores(threads: int) -> list[int]:
    """Pin this process to `threads` of the cores it may run on (the lowest-numbered), so the
    scheduler does not move its threads between cores mid-measurement (cold caches and a
    stolen core show up as outliers). Returns the cores; where the OS has no affinity call,
    nothing changes and the list is empty."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    allowed = sorted(os.sched_getaffinity(0))
    cores = allowed[:max(1, threads)]
    os.sched_setaffinity(0, cores)
    return cores


def make_evaluator(spec: WorkerSpec, workload, baseline_model):
    from .evaluator import Budget, Evaluator

    return Evaluator(
        workload, baseline_model, spec.device, threads=spec.threads, batch_sizes=tuple(spec.batch_sizes),
        budget=Budget(**spec.budget), max_accuracy_drop=spec.max_accuracy_drop,
        max_balanced_accuracy_drop=spec.max_balanced_accuracy_drop, ci_level=spec.ci_level,
    )


#: the knobs' build steps as an export names them; the later knobs are one stage, which also
#: holds the rebuilt model's held-out accuracy (`Evaluator.rebuild` measures it last)
EXPORT_STAGES = {"layers": "rebuild (prune)", "pruning": "rebuild (prune)", "distillation": "fine-tune"}
LATER_KNOBS = "rebuild (cast, quantize) and held-out accuracy"


def export_candidate(evaluator, workload, recipe, seed: int, fmt: str, folder: str,
                     on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Rebuild the trial's model and write it in `fmt` into `folder` (the driver composes the
    manifest and verifies the files in a fresh process). Returns what the manifest needs.
    `on_stage` hears each export stage as it starts: the rebuild's (EXPORT_STAGES), then the
    format's own (trace, compile, write)."""
    from pathlib import Path

    import torch

    from slimtune.spaces.precision import math_mode

    from slimtune.spaces.errors import one_line

    from .artifacts import FormatError, formats_for, write_artifact
    from .memory import weight_bytes

    stage = on_stage or (lambda name: None)
    with math_mode(recipe.precision):
        said: list[str] = []

        def rebuild_stage(knob: str) -> None:  # one line per stage, not per knob
            label = EXPORT_STAGES.get(knob, LATER_KNOBS)
            if not said or said[-1] != label:
                said.append(label)
                stage(label)

        candidate, accuracy = evaluator.rebuild(recipe, seed, rebuild_stage)
        example = candidate.inputs(evaluator.example(evaluator.batch_size))
        try:
            info = write_artifact(candidate.model, fmt, Path(folder), example, fresh_model=workload.make_model,
                                  on_stage=stage)
        except Exception as error:  # the format cannot hold this model: say which can
            others = [f for f in formats_for(recipe, str(evaluator.device)) if f != fmt]
            raise FormatError(f"format = {fmt!r} cannot hold this recipe ({one_line(error, 200)}); "
                              f"formats that can: {', '.join(others)}") from error
    memory_format = "channels_last" if candidate.memory_format == torch.channels_last else "contiguous"
    return {
        **info, "rebuilt_accuracy": accuracy, "dtype": str(example.dtype).removeprefix("torch."),
        "memory_format": memory_format, "num_classes": workload.num_classes,
        "quantized_layers": candidate.record.get("quantized_layers", []),
        "quantized_weight_share": candidate.record.get("quantized_weight_share", 0.0),
        "weight_bytes": weight_bytes(candidate.model),
    }


def _factory(path: str) -> Callable:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _restart_needed(error: BaseException) -> bool:
    """After these the CUDA context (or the process) cannot be trusted for the next trial."""
    import torch

    text = f"{type(error).__name__}: {error}"
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "CUDA error" in text or "cuDNN error" in text


def serve(conn, spec: WorkerSpec) -> None:
    """The worker's main loop (the spawned process's target)."""
    os.setpgrp()  # Ctrl-C in a terminal reaches the driver only; the driver decides
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if spec.inductor_cache_dir:  # identical graphs of one study are compiled once
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = spec.inductor_cache_dir
    import torch

    from slimtune.spaces import Recipe, SearchSpace, probe
    from slimtune.spaces.errors import one_line
    from slimtune.spaces.warnings_once import show_once

    from .baseline import TrainingRecipe, get_baseline, load_checkpoint
    from .evaluator import TrialStopped
    from .workloads import WorkloadError, check_quantization, load_workload

    lock = threading.Lock()

    def send(*message: Any) -> None:
        with lock:  # a warning can come from another thread
            conn.send(message)

    show_once(lambda line: send("warning", line))

    device = torch.device(spec.device)
    if spec.threads and device.type == "cpu":
        pin_to_cores(spec.threads)  # before torch starts its thread pool, so the pool inherits it
        torch.set_num_threads(spec.threads)
    workload = checkpoint_model = evaluator = None
    space = SearchSpace(**spec.space)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the driver is gone
            return
        kind = message[0]
        if kind not in ("confirm", "test") and hasattr(evaluator, "forget_built"):  # a factory's may not have it
            evaluator.forget_built()  # the confirmation's builds serve only the test split after it
        try:
            if kind == "stop":
                return
            if kind == "load":
                workload = load_workload(spec.model, spec.data, tuple(spec.input_shape), spec.data_root,
                                         spec.validation_share)
                check_quantization(workload, space.quantization)
                if spec.checkpoint:
                    checkpoint_model = load_checkpoint(workload, spec.checkpoint)
                from .selection import _labels

                judged = _labels(workload.data.val)
                send("loaded", {"num_classes": workload.num_classes, "validation": workload.data.validation,
                                "train_size": len(workload.data.train), "judged_size": len(workload.data.val),
                                "judged_classes": None if judged is None else
                                torch.bincount(judged.long(), minlength=workload.num_classes).tolist()})
            elif kind == "baseline":
                if checkpoint_model is not None:
                    source, seconds, model = f"checkpoint:{spec.checkpoint}", 0.0, checkpoint_model
                else:
                    baseline = get_baseline(
                        workload, device, recipe=TrainingRecipe(**spec.training), progress=lambda line: send("log", line)
                    )
                    source, seconds, model = baseline.source, baseline.train_seconds, baseline.model
                evaluator = _factory(spec.factory)(spec, workload, model)
                space, removals = probe(space, device, tuple(spec.input_shape), model)
                send("ready", {
                    "source": source, "train_seconds": seconds, "baseline_accuracy": evaluator.baseline_accuracy,
                    "baseline_balanced_accuracy": getattr(evaluator, "baseline_balanced_accuracy", None),
                    "space": space.to_dict(), "removals": [(r.knob, r.value, r.reason) for r in removals],
                })
            elif kind == "evaluate":
                _, recipe, seed = message
                measurement = evaluator.evaluate(
                    Recipe.from_dict(recipe), seed, on_stage=lambda name: send("stage", name)
                )
                send("result", measurement.to_dict())
            elif kind == "export":
                _, recipe, seed, fmt, folder = message
                send("result", export_candidate(evaluator, workload, Recipe.from_dict(recipe), seed, fmt, folder,
                                                on_stage=lambda name: send("stage", name)))
            elif kind == "confirm":
                from .confirm import confirm_candidates

                _, recipes, seeds, rounds = message
                send("result", confirm_candidates(evaluator, recipes, seeds, rounds,
                                                  on_stage=lambda name: send("stage", name)))
            elif kind == "test":  # the test split, once the search has ended (search/holdout.py)
                _, recipes, seeds = message
                send("result", evaluator.test_figures([Recipe.from_dict(r) for r in recipes], list(seeds),
                                                      on_stage=lambda name: send("stage", name)))
            elif kind == "check":
                evaluator.check_combination(Recipe.from_dict(message[1]))
                send("result", None)
            elif kind == "screen":  # one setting of the target screen (objectives/screen.py)
                from .screen import measure_setting

                _, recipe, accuracy, timeout_s = message
                send("result", measure_setting(evaluator, Recipe.from_dict(recipe), accuracy=accuracy,
                                               timeout_s=timeout_s, on_stage=lambda name: send("stage", name)))
        except WorkloadError as error:
            send("error", error.field, str(error), error.traceback)
        except TrialStopped as error:
            send("stopped", str(error))
        except Exception as error:  # a failing recipe is a result; the loop goes on
            restart = _restart_needed(error)
            send("failed", one_line(error), restart)
            if restart:
                return
