"""Builds a candidate from a recipe and measures it on the target, as it will be deployed.

Order: copy the baseline -> prune -> fine-tune (KD from the unpruned teacher) -> cast to the
precision -> quantize -> wrap in the runtime -> measure accuracy, latency, memory.
Everything reported is measured on the final callable; params and MACs are counted on the
pruned float model (quantization changes storage, not the count).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from slimtune.spaces import Recipe
from slimtune.spaces.distillation import finetune
from slimtune.spaces.precision import cast, dtype_of, math_mode
from slimtune.spaces.pruning import count_params_and_macs, prune
from slimtune.spaces.quantization import quantize
from slimtune.spaces.runtime import prepare

from .accuracy import top1_accuracy
from .batching import training_batches
from .latency import measure_latency
from .memory import peak_inference_bytes, weight_bytes
from .workloads import Workload

MB = 1e6
#: objective name -> what it measures; directions come from the study file.
OBJECTIVE_NAMES = ("accuracy", "latency_ms", "latency_p95_ms", "peak_memory_mb", "weight_mb", "params", "macs")


class TrialStopped(Exception):
    """The candidate was abandoned before it was fully measured; the message says why."""


@dataclass(frozen=True)
class Budget:
    finetune_steps: int = 200
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 64
    trial_timeout_s: float = 60.0
    latency_warmup: int = 10
    latency_repeats: int = 50
    latency_max_s: float = 3.0
    early_stop_checks: int = 4


@dataclass
class Measurement:
    accuracy: float
    latency_ms: float
    latency_p95_ms: float
    latency_repeats: int
    peak_memory_mb: float
    weight_mb: float
    params: int
    macs: int
    batch_size: int
    quantized_layers: list[str] = field(default_factory=list)
    unquantized_layers: dict[str, str] = field(default_factory=dict)
    finetune_steps_run: int = 0
    seconds: float = 0.0
    latency_by_batch_size: dict[str, dict[str, float]] = field(default_factory=dict)

    def objective(self, name: str) -> float:
        if name not in OBJECTIVE_NAMES:
            raise KeyError(f"unknown objective {name!r}; allowed: {list(OBJECTIVE_NAMES)}")
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Evaluator:
    """Measures recipes for one workload on one target device.

    `max_accuracy_drop` (a fraction) lets fine-tuning stop a candidate that can no longer
    reach `baseline_accuracy - max_accuracy_drop`.
    """

    def __init__(
        self,
        workload: Workload,
        baseline: nn.Module,
        device: torch.device | str = "cpu",
        *,
        threads: int | None = None,
        batch_sizes: tuple[int, ...] = (64,),
        budget: Budget = Budget(),
        max_accuracy_drop: float | None = None,
    ):
        self.workload = workload
        self.device = torch.device(device)
        if threads and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.batch_sizes = tuple(batch_sizes)
        self.budget = budget
        self.max_accuracy_drop = max_accuracy_drop
        self.teacher = copy.deepcopy(baseline).to(self.device).eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        val = workload.data.val
        self._check_split = Subset(val, range(min(len(val), 2048)))
        self.baseline_accuracy = top1_accuracy(self.teacher, val, self.batch_sizes[0], self.device)
        self._baseline_check_accuracy = self._quick_accuracy(self.teacher)

    def _quick_accuracy(self, model: nn.Module) -> float:
        return top1_accuracy(model, self._check_split, self.batch_sizes[0], self.device)

    def _example(self, batch_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        generator = torch.Generator().manual_seed(batch_size)
        return torch.randn(batch_size, *self.workload.input_shape, generator=generator).to(self.device, dtype)

    def evaluate(self, recipe: Recipe, seed: int = 0) -> Measurement:
        """Build and measure one candidate. Raises `TrialStopped` when abandoned early;
        any other exception means the recipe failed on this target."""
        started = time.perf_counter()
        deadline = started + self.budget.trial_timeout_s

        def check_time(stage: str) -> None:
            if time.perf_counter() > deadline:
                raise TrialStopped(f"timeout: over trial_timeout_s={self.budget.trial_timeout_s:g} during {stage}")

        torch.manual_seed(seed)
        model = copy.deepcopy(self.teacher).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        if recipe.prune_ratio > 0:
            prune(model, recipe.prune_ratio, self._example(1), self.workload.num_classes, recipe.prune_importance)
        params, macs = count_params_and_macs(model, self._example(1))
        steps_run = self._finetune(model, recipe, seed, check_time) if recipe.finetune_steps > 0 else 0
        check_time("fine-tuning")

        dtype = dtype_of(recipe.precision)
        cast(model, recipe.precision)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        quantized = quantize(model, recipe.quantization, self.device)
        run = prepare(model, recipe.runtime)
        with math_mode(recipe.precision):
            accuracy = top1_accuracy(run, self.workload.data.val, self.batch_sizes[0], self.device, dtype)
            check_time("accuracy")
            latencies = {}
            for batch_size in self.batch_sizes:
                remaining = max(0.5, deadline - time.perf_counter())
                latencies[batch_size] = measure_latency(
                    run, self._example(batch_size, dtype),
                    warmup=self.budget.latency_warmup, repeats=self.budget.latency_repeats,
                    max_seconds=min(self.budget.latency_max_s, remaining),
                )
                check_time(f"latency at batch {batch_size}")
            peak = peak_inference_bytes(run, model, self._example(self.batch_sizes[0], dtype))
        primary = latencies[self.batch_sizes[0]]
        return Measurement(
            accuracy=accuracy,
            latency_ms=primary.median_ms,
            latency_p95_ms=primary.p95_ms,
            latency_repeats=primary.repeats,
            peak_memory_mb=peak / MB,
            weight_mb=weight_bytes(model) / MB,
            params=params,
            macs=macs,
            batch_size=self.batch_sizes[0],
            quantized_layers=quantized.quantized,
            unquantized_layers=quantized.skipped,
            finetune_steps_run=steps_run,
            seconds=time.perf_counter() - started,
            latency_by_batch_size={str(bs): {"median_ms": s.median_ms, "p95_ms": s.p95_ms} for bs, s in latencies.items()},
        )

    def _finetune(self, model: nn.Module, recipe: Recipe, seed: int, check_time) -> int:
        """Fine-tune with KD; stop when over time or when recovery cannot reach the floor.

        The hopeless test runs from half the budget on (fine-tuning often loses accuracy
        before it recovers) and extrapolates the recovery so far linearly to the end of the
        budget. Recovery curves flatten, so the extrapolation is optimistic and stops only
        candidates that are clearly out of reach. It reads a held-out subset to decide, but
        never takes a gradient on it.
        """
        steps = recipe.finetune_steps
        floor = None
        if self.max_accuracy_drop is not None:
            floor = self._baseline_check_accuracy - self.max_accuracy_drop
        start_accuracy = self._quick_accuracy(model) if floor is not None else 0.0

        def check(step: int) -> None:
            check_time(f"fine-tuning (step {step}/{steps})")
            if floor is None or 2 * step < steps:
                return
            now = self._quick_accuracy(model)
            reachable = now + max(0.0, now - start_accuracy) * (steps - step) / step
            if reachable < floor:
                raise TrialStopped(
                    f"hopeless: accuracy {now:.4f} at step {step}/{steps} extrapolates to "
                    f"{reachable:.4f} < required {floor:.4f}"
                )

        batches = training_batches(self.workload.data.train, self.budget.finetune_batch_size, seed, self.device)
        check_every = max(1, steps // self.budget.early_stop_checks)
        result = finetune(
            model, self.teacher, batches, steps=steps,
            temperature=recipe.kd_temperature or 1.0, alpha=recipe.kd_alpha if recipe.kd_temperature else 0.0,
            lr=self.budget.finetune_lr, check_every=check_every, check=check,
        )
        return result.steps_run
