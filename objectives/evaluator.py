"""Builds a candidate from a recipe and measures it on the target, as it will be deployed.

Building runs every registered knob's `apply` in registry order (prune -> fine-tune with KD
from the unpruned teacher -> precision -> memory format -> quantize -> runtime); measuring
reads the final callable: accuracy, latency, memory. Params and MACs are counted on the
pruned float model (quantization changes storage, not the count). Everything runs inside the
recipe's math mode, so fp32 is IEEE fp32 (TF32 off) and tf32 is TF32.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from slimtune.spaces import Recipe
from slimtune.spaces.distillation import finetune
from slimtune.spaces.knob import Candidate
from slimtune.spaces.precision import math_mode
from slimtune.spaces.pruning import count_params_and_macs
from slimtune.spaces.registry import KNOBS

from .accuracy import accuracy_outcomes, accuracy_scores, scores_of, top1_accuracy
from .intervals import DEFAULT_LEVEL, Outcomes, drop_intervals
from .batching import training_batches
from .latency import measure_latency
from .memory import peak_inference_bytes, weight_bytes
from .selection import SELECTION_CHECKS, BestStep, hold_back
from .workloads import Workload

MB = 1e6
#: objective name -> what it measures; directions come from the study file.
OBJECTIVE_NAMES = ("accuracy", "balanced_accuracy", "latency_ms", "latency_p95_ms", "peak_memory_mb", "weight_mb", "params", "macs")


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
    #: measure until the median's 95% interval is within +-this; 0 = exactly latency_repeats
    latency_rel_tol: float = 0.01
    early_stop_checks: int = 4
    #: refine: keep the fine-tune's best step by this score ("accuracy" or "balanced_accuracy")
    #: on training images held back for it (objectives/selection.py); None keeps the last step
    keep_best: str | None = None
    #: refine: also score the candidate on the test split (the search is over, so reading it is
    #: reporting, not choosing) into `Measurement.test`; trials never do
    score_test: bool = False


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
    #: of the Linear/Conv weight elements, the share in quantized layers (0.0005: fc only on a ResNet-18)
    quantized_weight_share: float = 0.0
    #: the model's Linear/Conv layers (what `quantized_layers` is out of)
    weight_layers: int | None = None
    finetune_steps_run: int = 0
    seconds: float = 0.0
    latency_by_batch_size: dict[str, dict[str, float]] = field(default_factory=dict)
    compile_s: float | None = None
    #: facts the knobs reported while building (channel widths, TF32 on/off, ...)
    build: dict[str, Any] = field(default_factory=dict)
    #: mean per-class recall on the held-out split (objectives/accuracy.py)
    balanced_accuracy: float = math.nan
    #: 95% confidence interval of the latency median, calls per timed block, and whether the
    #: stopping rule was met (objectives/latency.py); None in measurements of older slimtunes
    latency_ci_low_ms: float | None = None
    latency_ci_high_ms: float | None = None
    latency_block: int | None = None
    latency_converged: bool | None = None
    #: the drops against the baseline on the split the trial was judged on, with their paired
    #: intervals (objectives/intervals.py: accuracy_drop, accuracy_drop_ci, balanced_accuracy_drop,
    #: balanced_accuracy_drop_ci, ci_level, examples, discordant) and `split`: "validation", or
    #: "held-out" for a workload without a validation split; {} in measurements of older slimtunes
    judged_on: dict[str, Any] = field(default_factory=dict)
    #: refine only (`Budget.score_test`): accuracy, balanced accuracy and the drops with their
    #: paired intervals on the test split; {} otherwise
    test: dict[str, Any] = field(default_factory=dict)

    def objective(self, name: str) -> float:
        if name not in OBJECTIVE_NAMES:
            raise KeyError(f"unknown objective {name!r}; allowed: {list(OBJECTIVE_NAMES)}")
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_finite(self) -> None:
        """A NaN or infinite figure is a failed measurement, never a point on the front."""
        for name in ("accuracy", "balanced_accuracy", "latency_ms", "latency_p95_ms", "peak_memory_mb", "weight_mb"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise FloatingPointError(f"measurement {name} is {value}")


def _build_key(recipe: Recipe, seed: int) -> str:
    return json.dumps([recipe.to_dict(), seed], sort_keys=True)


def extrapolated(start: float, last: float, now: float, last_step: int, step: int, steps: int) -> float:
    """The score the fine-tune could still reach by `steps`: `now` plus the faster of two linear
    rates, the recovery since the start and the one since the last check, over the steps left.

    Recovery curves flatten, so either rate is optimistic, and only candidates clearly out of
    reach are stopped. The recent rate matters for a pretrained transformer: its fine-tune first
    dips below where pruning left it (AdamW restarting on a converged model) and then climbs;
    the rate since the start reads that climb as none (measured on an H100: 36 of 44 MiniLM
    trials stopped at half their budget that way, docs/results/text.md)."""
    rates = [(now - start) / step] if step > 0 else []
    if step > last_step:
        rates.append((now - last) / (step - last_step))
    return now + max([0.0, *rates]) * (steps - step)


class Evaluator:
    """Measures recipes for one workload on one target device.

    `max_accuracy_drop` (a fraction) lets fine-tuning stop a candidate that can no longer
    reach `baseline_accuracy - max_accuracy_drop`; `max_balanced_accuracy_drop` does the same
    for balanced accuracy (either or both).
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
        max_balanced_accuracy_drop: float | None = None,
        ci_level: float = DEFAULT_LEVEL,
    ):
        self.workload = workload
        self.ci_level = ci_level
        self.device = torch.device(device)
        if threads and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.batch_sizes = tuple(batch_sizes)
        self.budget = budget
        self.max_accuracy_drop = max_accuracy_drop
        self.max_balanced_accuracy_drop = max_balanced_accuracy_drop
        self.teacher = copy.deepcopy(baseline).to(self.device).eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        # `val` is the validation split where the workload has one (objectives/splits.py): every
        # figure the search reads comes from it; the test split is read by `test_figures` and by
        # refine's `score_test` only, both after the search
        self._baseline_test: tuple[Outcomes, int] | None = None  # (outcomes, classes), read once
        # the confirmation's rebuilt points, kept for the test split that follows it (`keep_built`)
        self._kept: dict[str, Candidate] = {}
        val = workload.data.val
        self._check_split = Subset(val, range(min(len(val), 2048)))
        self._baseline_outcomes, classes = accuracy_outcomes(self.teacher, val, self.batch_sizes[0], self.device)
        scores = scores_of(self._baseline_outcomes, classes)
        self.baseline_accuracy, self.baseline_balanced_accuracy = scores.accuracy, scores.balanced_accuracy
        self._baseline_check = self._quick_scores(self.teacher)

    def _quick_scores(self, model: nn.Module):
        return accuracy_scores(model, self._check_split, self.batch_sizes[0], self.device)

    def _example(self, batch_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        batch = self.workload.example(batch_size)
        return batch.to(self.device, dtype) if batch.is_floating_point() else batch.to(self.device)

    # -- what the knobs may use while building (spaces.knob.BuildContext) --------------------
    @property
    def num_classes(self) -> int:
        return self.workload.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.workload.input_shape)

    @property
    def batch_size(self) -> int:
        return self.batch_sizes[0]

    def example(self, batch_size: int) -> torch.Tensor:
        return self._example(batch_size)

    def check_time(self, stage: str) -> None:
        if time.perf_counter() > self._deadline:
            raise TrialStopped(f"timeout: over trial_timeout_s={self.budget.trial_timeout_s:g} during {stage}")

    def finetune(self, model: nn.Module, recipe: Recipe) -> dict[str, Any]:
        return self._finetune(model, recipe, self._seed, self.check_time)

    # -- building and measuring -----------------------------------------------------------
    def build(self, recipe: Recipe, seed: int = 0, on_stage: Callable[[str], None] | None = None) -> Candidate:
        """The deployable candidate: a copy of the baseline with every knob applied in order.
        Call inside `math_mode(recipe.precision)` (as `evaluate` does)."""
        self._seed = seed
        if not hasattr(self, "_deadline"):
            self._deadline = time.perf_counter() + self.budget.trial_timeout_s
        torch.manual_seed(seed)
        model = copy.deepcopy(self.teacher).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        candidate = Candidate(model, self.device)
        for knob in KNOBS:
            if on_stage is not None:
                on_stage(knob.name)
            knob.apply(candidate, recipe, self)
            if knob.name == "distillation":  # counted on the pruned float model
                candidate.record["params"], candidate.record["macs"] = count_params_and_macs(model, self._example(1))
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return candidate

    def evaluate(self, recipe: Recipe, seed: int = 0, on_stage: Callable[[str], None] | None = None) -> Measurement:
        """Build and measure one candidate. Raises `TrialStopped` when abandoned early;
        any other exception means the recipe failed on this target. `on_stage` hears the
        name of each step as it starts (the worker process reports it to the driver)."""
        started = time.perf_counter()
        self._deadline = started + self.budget.trial_timeout_s
        stage = on_stage or (lambda name: None)
        try:
            with math_mode(recipe.precision):
                candidate = self.build(recipe, seed, stage)
                stage("accuracy")
                outcomes, classes = accuracy_outcomes(
                    candidate, self.workload.data.val, self.batch_sizes[0], self.device, prepare=candidate.inputs
                )
                scores = scores_of(outcomes, classes)
                tested = self._scored_on_test(candidate) if self.budget.score_test else {}
                self.check_time("accuracy")
                latencies = {}
                for batch_size in self.batch_sizes:
                    stage(f"latency at batch {batch_size}")
                    remaining = max(0.5, self._deadline - time.perf_counter())
                    latencies[batch_size] = measure_latency(
                        candidate, candidate.inputs(self._example(batch_size)),
                        warmup=self.budget.latency_warmup, repeats=self.budget.latency_repeats,
                        max_seconds=min(self.budget.latency_max_s, remaining), rel_tol=self.budget.latency_rel_tol,
                    )
                    self.check_time(f"latency at batch {batch_size}")
                stage("memory")
                example = candidate.inputs(self._example(self.batch_sizes[0]))
                peak = peak_inference_bytes(candidate.deployed, candidate.model, example)
        finally:
            del self._deadline
        primary = latencies[self.batch_sizes[0]]
        record = dict(candidate.record)
        measurement = Measurement(
            accuracy=scores.accuracy,
            balanced_accuracy=scores.balanced_accuracy,
            latency_ms=primary.median_ms,
            latency_p95_ms=primary.p95_ms,
            latency_repeats=primary.repeats,
            peak_memory_mb=peak / MB,
            weight_mb=weight_bytes(candidate.model) / MB,
            params=record.pop("params"),
            macs=record.pop("macs"),
            batch_size=self.batch_sizes[0],
            quantized_layers=record.pop("quantized_layers", []),
            unquantized_layers=record.pop("unquantized_layers", {}),
            quantized_weight_share=record.pop("quantized_weight_share", 0.0),
            weight_layers=record.pop("weight_layers", None),
            finetune_steps_run=record.pop("finetune_steps_run", 0),
            seconds=time.perf_counter() - started,
            latency_by_batch_size={str(bs): {"median_ms": s.median_ms, "p95_ms": s.p95_ms, "ci_low_ms": s.ci_low_ms,
                                             "ci_high_ms": s.ci_high_ms, "repeats": s.repeats, "block": s.block}
                                   for bs, s in latencies.items()},
            compile_s=record.pop("compile_s", None),
            build=record,
            latency_ci_low_ms=primary.ci_low_ms,
            latency_ci_high_ms=primary.ci_high_ms,
            latency_block=primary.block,
            latency_converged=primary.converged,
            judged_on={**drop_intervals(self._baseline_outcomes, outcomes, self.ci_level), "split": self.split_name},
            test=tested,
        )
        measurement.check_finite()
        return measurement

    def _scored_on_test(self, candidate: Candidate) -> dict[str, Any]:
        """The candidate's figures on the test split against the baseline's on the same examples;
        {} for a workload without one."""
        test = self.workload.data.test
        if test is None:
            return {}
        baseline, _ = self._baseline_on_test()
        outcomes, classes = accuracy_outcomes(candidate, test, self.batch_sizes[0], self.device, prepare=candidate.inputs)
        scores = scores_of(outcomes, classes)
        return {"accuracy": scores.accuracy, "balanced_accuracy": scores.balanced_accuracy,
                **drop_intervals(baseline, outcomes, self.ci_level)}

    def _baseline_on_test(self) -> tuple[Outcomes, int]:
        """The baseline's answers on the test split, scored once per worker."""
        if self._baseline_test is None:
            self._baseline_test = accuracy_outcomes(self.teacher, self.workload.data.test, self.batch_sizes[0],
                                                    self.device)
        return self._baseline_test

    def keep_built(self, built: list[tuple[Recipe, int, Candidate]]) -> None:
        """Keep the confirmation's rebuilt points for `test_figures`, which comes next at the end of
        a search and would otherwise build (fine-tune, quantize, compile) each point once more;
        `forget_built` drops them."""
        self._kept = {_build_key(recipe, seed): candidate for recipe, seed, candidate in built}

    def forget_built(self) -> None:
        self._kept = {}

    @property
    def split_name(self) -> str:
        """What `val` is: the validation split, or the loader's held-out split where no
        validation split was carved."""
        return "validation" if self.workload.data.test is not None else "held-out"

    def test_figures(self, recipes: list[Recipe], seeds: list[int],
                     on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
        """The test split, read once when the search has ended: the baseline and each recipe
        (rebuilt as its trial built it: same seed, same fine-tuning, its runtime) scored on it,
        with each point's drops and paired intervals against the baseline on the same examples,
        and each rebuilt point's validation figures (they should match its trial's)."""
        test = self.workload.data.test
        if test is None:
            raise ValueError("this workload has no test split (no validation split was carved)")
        stage = on_stage or (lambda name: None)
        stage("baseline on the test split")
        baseline, classes = self._baseline_on_test()
        base = scores_of(baseline, classes)
        points = []
        for index, (recipe, seed) in enumerate(zip(recipes, seeds)):
            stage(f"test split: point {index + 1}/{len(recipes)}")
            self._deadline = time.perf_counter() + 2 * self.budget.trial_timeout_s
            try:
                with math_mode(recipe.precision):
                    candidate = self._kept.pop(_build_key(recipe, seed), None) or self.build(recipe, seed)
                    figures = self._scored_on_test(candidate)
                    validation, classes = accuracy_outcomes(candidate, self.workload.data.val, self.batch_sizes[0],
                                                            self.device, prepare=candidate.inputs)
            finally:
                del self._deadline
            points.append({**figures, "validation_accuracy": scores_of(validation, classes).accuracy})
        return {"examples": len(baseline), "baseline_accuracy": base.accuracy,
                "baseline_balanced_accuracy": base.balanced_accuracy, "ci_level": self.ci_level, "points": points}

    def rebuild(self, recipe: Recipe, seed: int, on_stage: Callable[[str], None] | None = None) -> tuple[Candidate, float]:
        """The trial's model again, for export: built as `evaluate` built it (same seed, same
        fine-tuning) but without its runtime wrapper, and its held-out accuracy. Call inside
        `math_mode(recipe.precision)`. Gets twice the trial's time: it only has to finish."""
        self._deadline = time.perf_counter() + 2 * self.budget.trial_timeout_s
        try:
            candidate = self.build(Recipe.from_dict({**recipe.to_dict(), "runtime": "eager"}), seed, on_stage)
        finally:
            del self._deadline
        accuracy = top1_accuracy(candidate, self.workload.data.val, self.batch_sizes[0], self.device,
                                 prepare=candidate.inputs)
        return candidate, accuracy

    def check_combination(self, recipe: Recipe) -> None:
        """Build the unpruned model with `recipe`'s other knobs and run it once: raises when
        the combination fails whatever the prune ratio (the driver then fails later trials
        that sample it at once, without another fine-tuning)."""
        unpruned = Recipe.from_dict({**recipe.to_dict(), "prune_ratio": 0.0, "finetune_steps": 0,
                                     "kd_temperature": None, "kd_alpha": 0.0})
        self._deadline = time.perf_counter() + self.budget.trial_timeout_s
        try:
            with math_mode(unpruned.precision):
                candidate = self.build(unpruned)
                with torch.inference_mode():
                    output = candidate(candidate.inputs(self._example(self.batch_sizes[0])))
                if not torch.isfinite(output.float()).all():
                    raise FloatingPointError("non-finite output")
        finally:
            del self._deadline

    def _selection_split(self) -> tuple[Dataset, Dataset]:
        """(training images, images held back to choose the step), carved once per worker."""
        if not hasattr(self, "_held_back"):
            self._held_back = hold_back(self.workload.data.train)
        return self._held_back

    def _finetune(self, model: nn.Module, recipe: Recipe, seed: int, check_time: Callable[[str], None]) -> dict[str, Any]:
        """Fine-tune with KD; stop when over time or when recovery cannot reach the floor.

        The hopeless test runs from half the budget on (fine-tuning often loses accuracy
        before it recovers) and extrapolates to the end of the budget (`extrapolated`). It reads
        a held-out subset to decide, but never takes a gradient on it.

        With `budget.keep_best` (refine), the run trains on the training images less a held-back
        share, scores that share `SELECTION_CHECKS` times and at the end, and keeps the best step.
        """
        steps = recipe.finetune_steps
        floors = {}  # score name -> the lowest the constraint allows (on the check split)
        if self.max_accuracy_drop is not None:
            floors["accuracy"] = self._baseline_check.accuracy - self.max_accuracy_drop
        if self.max_balanced_accuracy_drop is not None:
            floors["balanced_accuracy"] = self._baseline_check.balanced_accuracy - self.max_balanced_accuracy_drop
        start = self._quick_scores(model) if floors else None
        train, best = self.workload.data.train, None
        if self.budget.keep_best:
            train, held = self._selection_split()
            best = BestStep(self.budget.keep_best)

            def score(step: int) -> None:
                scores = accuracy_scores(model, held, self.batch_sizes[0], self.device)
                best.offer(model, step, getattr(scores, best.score_name))

        previous: list = [0, start]  # the last check's step and scores

        def check(step: int) -> None:
            check_time(f"fine-tuning (step {step}/{steps})")
            if best is not None:
                score(step)
            if not floors or 4 * step < steps:
                return
            scores = self._quick_scores(model)
            last_step, last = previous
            previous[:] = [step, scores]
            if 2 * step < steps:
                return
            for name, floor in floors.items():
                reachable = extrapolated(getattr(start, name), getattr(last, name), getattr(scores, name),
                                         last_step, step, steps)
                now = getattr(scores, name)
                if reachable < floor:
                    label = "accuracy" if name == "accuracy" else "balanced accuracy"
                    raise TrialStopped(
                        f"hopeless: {label} {now:.4f} at step {step}/{steps} extrapolates to "
                        f"{reachable:.4f} < required {floor:.4f}"
                    )

        batches = training_batches(train, self.budget.finetune_batch_size, seed, self.device)
        checks = SELECTION_CHECKS if best is not None else self.budget.early_stop_checks
        result = finetune(
            model, self.teacher, batches, steps=steps,
            temperature=recipe.kd_temperature or 1.0, alpha=recipe.kd_alpha if recipe.kd_temperature else 0.0,
            lr=self.budget.finetune_lr, check_every=max(1, steps // checks), check=check,
            autocast=torch.bfloat16 if self.device.type == "cuda" else None,
        )
        if best is None:
            return {"finetune_steps_run": result.steps_run}
        score(result.steps_run)
        best.restore(model)
        return best.facts(result.steps_run)
