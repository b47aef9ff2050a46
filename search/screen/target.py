"""The target screen: before the first trial, measure what the deployment knobs do on this
target, and search only the settings that pay.

A deployment setting is one precision x memory format x quantization x runtime. Latency, peak
memory and weight bytes do not depend on fine-tuning, so each setting is built from the
baseline's weights and measured in the worker process (objectives/screen.py) in seconds, with
a hard per-setting timeout: a setting that hangs, crashes or times out is dropped with its
reason, as a failed trial is, and the screen goes on.

1. Unpruned: every setting's latency, peak memory and weights; held-out accuracy once per
   precision x quantization (memory format and runtime do not change the arithmetic), through
   the callable as deployed. The first settings are one-factor-at-a-time moves around the
   fastest setting so far, until a pass changes nothing; the rest follow in the order their
   factors predict (a log-linear main-effects model fitted to what was measured; fastest
   first), while the budget lasts. A setting the budget left unmeasured is judged on that
   prediction, and its line says so; one with no prediction is kept.
2. Pruned at the top of the study's range, not fine-tuned: the settings again, fastest first,
   while the budget lasts (a setting that loses unpruned may win where the model is
   launch-bound); the first of them also a step and two below the top, where the search's
   prune ladder may start (search/first_trials.py); those two may use the whole budget.
3. The pruning shape (`prune_round_to` x `prune_scope`) at the top and the middle of the range,
   in the fastest setting run without compiling (a compile per shape would eat the budget),
   latency only.

A setting survives if its held-out scores are within the study's allowed drops (top-1 and,
where the study constrains it, balanced accuracy) and no measured setting on the front beats it
by more than the margin on one of the study's cost axes (latency, peak memory, weights) while
being no worse than the margin on the others, at any screened ratio; a setting that only ties
there goes when one rival is within the margin of it at both ratios and beats it at one. A
quantized setting within the margin of an unquantized one on every axis is dropped too (its
quantization buys nothing). The setting timed fastest pruned (at the top ratio or below it) is
kept whatever else is said of it: the search's prune ladder starts there (`ladder_start`). A shape survives unless, at every ratio it was timed at, another
shape is faster by more than the margin while keeping at least as many weights (at one nominal
ratio a coarser rounding keeps more channels: it may be slower only for being bigger). The
surviving settings become one categorical choice of the search (sampling each factor from the
survivors' values would bring back the settings the screen dropped: fp32 eager survives
nowhere, but fp32 and eager each survive somewhere);
explicit `[space]` choices are the ceiling (the screen only narrows).
"""

from __future__ import annotations

import math
import time
from typing import Any

from slimtune.spaces import Recipe, SearchSpace

from slimtune.search.deadline import TimedOut

from .settings import (COST_AXES, DEPLOYMENT, SHAPE, Log, cost_axes, dominates, exact_front, label, prunes,
                       settings_of, shape_label, shapes_of, why_dominated)

#: shares of the budget after which the pruned phase and the shape phase start at the latest
PHASE_SHARES = (0.6, 0.85)
MAX_PASSES = 3
#: the screen format this module writes; version 1 (no `settings` to sample as one choice) still reads
VERSION = 2
#: a value never measured working borrows the main effect of the value that stands in for it.
#: CUDA graphs remove launch overhead and nothing else, so until a graphed runtime is measured its
#: base runtime predicts it (within 3% on an H200 at batch 256: fp16 channels_last fp8 eager
#: 5.49 ms, cudagraphs 5.37 ms); without a stand-in, one cold compile that used up the budget left
#: 40 unmeasured compile+cudagraphs settings kept and nothing narrowed.
STAND_INS = {("runtime", "compile+cudagraphs"): "compile", ("runtime", "cudagraphs"): "eager"}
#: settings tried for a value that has only failed so far, before its other settings are judged
#: on its failures. On an H200 a ResNet-50's fp16 int8 settings gave non-finite logits; with
#: int8 never measured working nothing with int8 could be estimated, and the screen kept all
#: 64 of them (the search then spent trials on int8 settings that failed).
FAILED_VALUE_PROBES = 2
#: a walk move that needs a compile is not measured when the fit of what was measured predicts
#: it at least this many times slower than the incumbent and better on no axis: on an H200 a
#: ResNet-50 walk spent 13 s of a 60-s screen compiling fp32 channels_last to learn it was 7.5x
#: slower than fp16, which the eager settings had already shown (fp32 2.9x slower than fp16)
SKIP_COMPILE_SLOWER = 2.0
#: the step below the top ratio at which the pruned phase's first setting is timed again (twice)
BELOW_THE_TOP = 0.05


class Screen:
    """Runs the screen against an evaluator with `screen(recipe, accuracy=, timeout_s=)` (the
    worker process's, search/isolated.py) and returns its result as plain data."""

    def __init__(self, evaluator: Any, space: SearchSpace, *, objectives: dict[str, str],
                 max_accuracy_drop: float | None, budget_s: float, setting_timeout_s: float, margin: float,
                 max_balanced_accuracy_drop: float | None = None, log: Log = print):
        self.evaluator, self.space, self.log = evaluator, space, log
        self.axes = cost_axes(objectives)
        self.budget_s, self.timeout_s, self.margin = budget_s, setting_timeout_s, margin
        self.baseline_accuracy = evaluator.baseline_accuracy
        self.floor = None if max_accuracy_drop is None else self.baseline_accuracy - max_accuracy_drop
        # the study's constraint may be on balanced accuracy instead (or as well): the same floor rule
        self.baseline_balanced = getattr(evaluator, "baseline_balanced_accuracy", None)
        self.balanced_floor = (None if max_balanced_accuracy_drop is None or self.baseline_balanced is None
                               else self.baseline_balanced - max_balanced_accuracy_drop)
        self.settings = settings_of(space)
        self.index = {tuple(s[f] for f in DEPLOYMENT): i for i, s in enumerate(self.settings)}
        low, high = space.prune_ratio if prunes(space) else (0.0, 0.0)
        self.high = round(high, 4)
        self.mid = round((low + high) / 2, 4)
        shapes = shapes_of(space) if prunes(space) else []
        self.prune_shape = next((s for s in shapes if s["prune_round_to"] == 8), shapes[0] if shapes else None)
        self.shapes = shapes if len(shapes) > 1 else []
        #: (setting index, ratio) -> figures or {"error": reason}
        self.measured: dict[tuple[int, float], dict[str, Any]] = {}
        #: (precision, quantization) -> (accuracy, label of the setting it was measured on)
        self.accuracy: dict[tuple[str, str], tuple[float, str]] = {}
        #: (precision, quantization) -> balanced accuracy, measured in the same pass
        self.balanced: dict[tuple[str, str], float] = {}
        self.shape_latency: dict[tuple[int, float], dict[str, Any]] = {}
        #: compiled walk moves not measured because predicted to lose (logged once each)
        self._skipped: set[int] = set()
        #: the setting timed below the top ratio, and its latency per ratio (`_time_below_the_top`)
        self.ladder: dict[str, Any] | None = None
        #: set when the run's --timeout cut a measurement: the screen ends with what it has
        self.stopped = False

    # -- measuring -----------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _time_up(self, limit_s: float) -> bool:
        return self.stopped or self._elapsed() > limit_s

    def _out_of_time(self, what: str) -> dict[str, Any]:
        """The run's `--timeout` cut a measurement: nothing more is measured, and the setting in
        flight is left unmeasured (judged as the budget leaves any setting), not failed."""
        self.stopped = True
        self.log(f"screen: stopped at the run's --timeout while measuring {what}; judged on what was measured")
        return {"error": "not measured: the run's --timeout"}

    def _recipe(self, setting: dict[str, Any], ratio: float, shape: dict[str, Any] | None = None) -> Recipe:
        fields = dict(setting)
        if ratio > 0:
            fields.update(prune_ratio=ratio, **(shape or self.prune_shape))
        return Recipe(**fields)

    def _measure(self, index: int, ratio: float) -> dict[str, Any]:
        key = (index, ratio)
        if key in self.measured:
            return self.measured[key]
        setting = self.settings[index]
        pair = (setting["precision"], setting["quantization"])
        need_accuracy = ratio == 0 and pair not in self.accuracy and pair != ("fp32", "none")
        try:
            figures = self.evaluator.screen(self._recipe(setting, ratio), accuracy=need_accuracy,
                                            timeout_s=self.timeout_s)
        except TimedOut:
            return self._out_of_time(label(setting))
        except KeyboardInterrupt:
            raise
        except Exception as error:  # a setting that fails is a result: dropped with its reason
            figures = {"error": str(error)}
        if need_accuracy and "error" not in figures:
            self.accuracy[pair] = (figures["accuracy"], label(setting))
            if figures.get("balanced_accuracy") is not None:
                self.balanced[pair] = figures["balanced_accuracy"]
        self.measured[key] = figures
        where = "" if ratio == 0 else f" at prune {ratio:g}"
        if "error" in figures:
            self.log(f"screen: {label(setting)}{where}: failed: {figures['error']}")
        else:
            self.log(f"screen: {label(setting)}{where}: {figures['latency_ms']:.3f} ms, "
                     f"{figures['peak_memory_mb']:.1f} MB peak, {figures['weight_mb']:.2f} MB weights")
        return figures

    def _accuracy_of(self, setting: dict[str, Any]) -> float | None:
        pair = (setting["precision"], setting["quantization"])
        if pair == ("fp32", "none"):
            return self.baseline_accuracy
        return self.accuracy[pair][0] if pair in self.accuracy else None

    def _balanced_of(self, setting: dict[str, Any]) -> float | None:
        pair = (setting["precision"], setting["quantization"])
        return self.baseline_balanced if pair == ("fp32", "none") else self.balanced.get(pair)

    def _shortfall(self, setting: dict[str, Any]) -> str | None:
        """Why the setting's held-out scores are below the study's floor, or None."""
        for name, score, baseline, floor in (
            ("accuracy", self._accuracy_of(setting), self.baseline_accuracy, self.floor),
            ("balanced accuracy", self._balanced_of(setting), self.baseline_balanced, self.balanced_floor),
        ):
            if floor is not None and score is not None and score < floor:
                return f"{name} {score:.4f} (drop {100 * (baseline - score):.2f} pts) below the floor {floor:.4f}"
        return None

    def _acceptable(self, setting: dict[str, Any]) -> bool | None:
        if self._accuracy_of(setting) is None:
            return None
        return self._shortfall(setting) is None

    def _ok(self, index: int, ratio: float) -> dict[str, Any] | None:
        figures = self.measured.get((index, ratio))
        return figures if figures is not None and "error" not in figures else None

    def _incumbent_passes(self, budget_s: float) -> int:
        """One-factor-at-a-time moves from the first setting to the fastest acceptable one,
        until a whole pass leaves it where it was; returns the incumbent's index."""
        incumbent = 0
        for _ in range(MAX_PASSES):
            before = incumbent
            for factor in DEPLOYMENT:
                for value in getattr(self.space, factor):
                    if self._time_up(budget_s):
                        return incumbent
                    neighbour = dict(self.settings[incumbent], **{factor: value})
                    index = self.index[tuple(neighbour[f] for f in DEPLOYMENT)]
                    if not self._predicted_to_lose(index, incumbent):
                        self._measure(index, 0.0)
                incumbent = self._fastest(0.0, default=incumbent)
            if incumbent == before:
                break
        return incumbent

    def _predicted_to_lose(self, index: int, incumbent: int) -> bool:
        """Whether a compiled walk move is predicted to lose by SKIP_COMPILE_SLOWER; logged, then
        left to be judged on its estimate (or measured later, fastest-predicted first, if the
        budget lasts)."""
        mine = self._ok(incumbent, 0.0)
        if "compile" not in self.settings[index]["runtime"] or (index, 0.0) in self.measured or mine is None:
            return False
        estimate = self._estimate(index, self._fit())
        if estimate is None or estimate["latency_ms"] < SKIP_COMPILE_SLOWER * mine["latency_ms"]:
            return False
        if any(estimate[a] < mine[a] * (1 - self.margin) for a in self.axes):
            return False
        if index not in self._skipped:
            self._skipped.add(index)
            self.log(f"screen: not compiling {label(self.settings[index])}: predicted "
                     f"{estimate['latency_ms'] / mine['latency_ms']:.1f}x slower than {label(self.settings[incumbent])}")
        return True

    def _cheap_and_near(self, index: int, near: dict[str, Any]) -> tuple[bool, int]:
        """A probe's order among candidates: eager first (no compile to wait for), then the
        fewest factors away from `near` (the incumbent)."""
        setting = self.settings[index]
        return setting["runtime"] != "eager", sum(setting[f] != near[f] for f in DEPLOYMENT)

    def _probe_unknown_accuracy(self, incumbent: int, budget_s: float) -> None:
        """A setting that would be kept on an estimate while its precision x quantization has no
        measured accuracy gets that accuracy measured on one setting of the pair, eager first
        (about a second): on an H200 a ResNet-50 screen kept 8 unmeasured bf16 int4 settings
        so, where int4 in fp16 had lost 19 points of accuracy."""
        near = self.settings[incumbent]
        pairs = []
        for index, (kept, _) in self._verdict_at(0.0, with_estimates=True).items():
            setting = self.settings[index]
            pair = (setting["precision"], setting["quantization"])
            if kept and self._acceptable(setting) is None and pair not in pairs:
                pairs.append(pair)
        for pair in pairs:
            if self._time_up(budget_s):
                return
            candidates = [i for i, s in enumerate(self.settings)
                          if (s["precision"], s["quantization"]) == pair and (i, 0.0) not in self.measured]
            if candidates:
                self._measure(min(candidates, key=lambda i: self._cheap_and_near(i, near)), 0.0)

    def _failed_values(self) -> dict[tuple[str, Any], list[int]]:
        """(factor, value) -> the unpruned settings (indices) with it that failed, for each value
        whose every measured setting failed (and whose stand-in, if any, never worked either)."""
        worked, failed = set(), {}
        for (index, ratio), figures in self.measured.items():
            if ratio != 0.0:
                continue
            for factor in DEPLOYMENT:
                key = (factor, self.settings[index][factor])
                if "error" in figures:
                    failed.setdefault(key, []).append(index)
                else:
                    worked.add(key)
        return {key: tried for key, tried in failed.items() if key not in worked
                and (key[0], STAND_INS.get(key)) not in worked}

    def _probe_failed_values(self, incumbent: int, budget_s: float) -> None:
        """Each value that has only failed is tried in up to FAILED_VALUE_PROBES more settings,
        in a precision none of its failures had (a failure is most often the arithmetic: fp16
        overflow), eager first (no compile to wait for), then nearest the incumbent."""
        near = self.settings[incumbent]
        for (factor, value), tried in self._failed_values().items():
            failed_precisions = {self.settings[i]["precision"] for i in tried}
            candidates = [i for i, s in enumerate(self.settings) if s[factor] == value and (i, 0.0) not in self.measured]
            candidates.sort(key=lambda i: (self.settings[i]["precision"] in failed_precisions,
                                           *self._cheap_and_near(i, near)))
            for index in candidates[:FAILED_VALUE_PROBES]:
                if self._time_up(budget_s):
                    return
                if "error" not in self._measure(index, 0.0):
                    break

    def _fastest(self, ratio: float, default: int | None = None) -> int | None:
        """The fastest acceptable setting at `ratio`; among those within the margin of it, the
        first in the study's order (the plainest: no quantization before fp8). A 0.7% win of
        fp8 over no quantization is noise, and walking on from it made every later move a
        quantized compile (68 s cold on an H200 against ~15 s)."""
        candidates = [(f["latency_ms"], i) for (i, r), f in self.measured.items()
                      if r == ratio and "error" not in f and self._acceptable(self.settings[i]) is not False]
        if not candidates:
            return default
        best = min(latency for latency, _ in candidates)
        return min(i for latency, i in candidates if latency <= best * (1 + self.margin))

    def _fit(self) -> dict[str, dict[tuple[str, Any], float] | float] | None:
        """Main effects of each factor's values on each cost axis, in logs, fitted by least
        squares to every unpruned setting measured so far (the one-factor moves determine it;
        later settings refine it). None before anything was measured."""
        import numpy as np

        rows = [(self.settings[i], f) for (i, r), f in self.measured.items() if r == 0.0 and "error" not in f]
        if not rows:
            return None
        columns = sorted({(factor, s[factor]) for s, _ in rows for factor in DEPLOYMENT}, key=str)
        design = np.array([[1.0] + [1.0 if s[factor] == value else 0.0 for factor, value in columns] for s, _ in rows])
        fits: dict[str, Any] = {"columns": columns}
        for axis in COST_AXES:
            target = np.log(np.array([max(f[axis], 1e-9) for _, f in rows]))
            coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
            fits[axis] = coefficients
        return fits

    def _estimate(self, index: int, fits: dict[str, Any] | None) -> dict[str, Any] | None:
        """A setting's unpruned figures predicted from the factors' main effects (a log-linear
        model of what was measured); a value never measured working borrows its stand-in's
        effect (STAND_INS, named in the estimate's `stand_in`); None when neither was measured."""
        if fits is None:
            return None
        setting = dict(self.settings[index])
        columns = fits["columns"]
        borrowed = []
        for factor in DEPLOYMENT:
            if (factor, setting[factor]) in columns:
                continue
            stand_in = STAND_INS.get((factor, setting[factor]))
            if stand_in is None or (factor, stand_in) not in columns:
                return None
            borrowed.append(f"{setting[factor]} taken as {stand_in}")
            setting[factor] = stand_in
        row = [1.0] + [1.0 if setting[factor] == value else 0.0 for factor, value in columns]
        estimate: dict[str, Any] = {axis: math.exp(sum(a * b for a, b in zip(row, fits[axis]))) for axis in COST_AXES}
        if borrowed:
            estimate["stand_in"] = ", ".join(borrowed)
        return estimate

    def run(self) -> dict[str, Any]:
        self.started = time.perf_counter()
        shares = [share * self.budget_s for share in PHASE_SHARES]
        incumbent = self._incumbent_passes(shares[0])
        self._probe_failed_values(incumbent, shares[0])
        fits = self._fit()
        self.estimates = {i: self._estimate(i, fits) for i in range(len(self.settings))}
        order = sorted((i for i in range(len(self.settings)) if (i, 0.0) not in self.measured),
                       key=lambda i: (self.estimates[i] is None, (self.estimates[i] or {}).get("latency_ms", 0.0)))
        for index in order:
            if self._time_up(shares[0]):
                break
            self._measure(index, 0.0)
        fits = self._fit()  # refined by every setting measured since
        self.estimates = {i: self._estimate(i, fits) for i in range(len(self.settings))}
        self._probe_unknown_accuracy(incumbent, shares[1])
        if self.high > 0:
            unpruned = {i: self._ok(i, 0.0) or self.estimates.get(i) for i in range(len(self.settings))}
            order = sorted((i for i, f in unpruned.items() if f is not None and self._acceptable(self.settings[i]) is not False),
                           key=lambda i: unpruned[i]["latency_ms"])
            for index in order:
                if self._time_up(shares[1]):
                    break
                if "error" not in self._measure(index, self.high) and self.ladder is None:
                    self._time_below_the_top(index)
        if self.shapes:
            self._screen_shapes()
        return self.result()

    def _time_below_the_top(self, index: int) -> None:
        """The first setting measured pruned (the one predicted fastest) timed again a step or two
        below the top ratio: latency is not monotone in the ratio where channel widths fall onto
        slow kernels (on an H200 a ResNet-18 in fp16 compile+cudagraphs ran 2.41 ms at prune 0.9
        and 1.44 ms at 0.85), and the search's prune ladder starts at the fastest of these. These
        timings decide where the first trial starts, so they may use the whole budget (the shapes
        get what is left), not only the pruned phase's share."""
        low = self.space.prune_ratio[0]
        self.ladder = {"setting": [self.settings[index][f] for f in DEPLOYMENT], "latency_ms": {}}
        for ratio in [self.high] + [round(self.high - k * BELOW_THE_TOP, 4) for k in (1, 2)]:
            if ratio < low or (ratio != self.high and self._time_up(self.budget_s)):
                break
            figures = self._measure(index, ratio)
            if "error" not in figures:
                self.ladder["latency_ms"][str(ratio)] = figures["latency_ms"]

    def _screen_shapes(self) -> None:
        best = self._fastest(self.high)
        best = self._fastest(0.0) if best is None else best
        if best is None:
            return
        setting = self._without_compiling(self.settings[best])
        self.shape_setting = label(setting)
        for ratio in (self.high, self.mid):
            for index, shape in enumerate(self.shapes):
                if self._time_up(self.budget_s):
                    return
                try:
                    figures = self.evaluator.screen(self._recipe(setting, ratio, shape), accuracy=False,
                                                    timeout_s=self.timeout_s)
                except TimedOut:
                    self._out_of_time(f"shape {shape_label(shape)}")
                    return
                except KeyboardInterrupt:
                    raise
                except Exception as error:
                    figures = {"error": str(error)}
                self.shape_latency[(index, ratio)] = figures
                shown = f"failed: {figures['error']}" if "error" in figures else f"{figures['latency_ms']:.3f} ms"
                self.log(f"screen: shape {shape_label(shape)} at prune {ratio:g} in {self.shape_setting}: {shown}")

    def _without_compiling(self, setting: dict[str, Any]) -> dict[str, Any]:
        """`setting` with a runtime that does not compile: a shape changes the kernels' own
        widths, which uncompiled kernels show too, and every pruned shape is a new graph, so a
        compiled runtime would pay a compile per shape (10-30 s each for a ResNet-18 on an H200)
        where a CUDA graph capture takes a second. The graphed runtime is preferred: it removes
        the launch overhead that would hide the widths at high prune ratios."""
        if "compile" not in setting["runtime"]:
            return setting
        for runtime in ("cudagraphs", "eager"):
            if runtime not in self.space.runtime:
                continue
            plain = dict(setting, runtime=runtime)
            figures = self.measured.get((self.index[tuple(plain[f] for f in DEPLOYMENT)], 0.0))
            if figures is None or "error" not in figures:
                return plain
        return setting

    # -- deciding --------------------------------------------------------------------------
    def _verdict_at(self, ratio: float, with_estimates: bool) -> dict[int, tuple[bool, str | None]]:
        """Per setting that has figures at `ratio`: (on the margin front, why not)."""
        points: dict[int, dict[str, float]] = {}
        estimated: set[int] = set()
        for index, setting in enumerate(self.settings):
            if self._acceptable(setting) is False:
                continue
            figures = self._ok(index, ratio)
            if figures is None and with_estimates and (index, ratio) not in self.measured:
                figures = self.estimates.get(index)
                if figures is not None:
                    estimated.add(index)
            if figures is not None:
                points[index] = figures
        # rivals come from the front of what was measured: an estimate never drops a setting, and an
        # estimate on the front must not hide the measured settings that beat the rest (an unmeasured
        # bf16 int4 predicted fastest once kept fp32 eager, 7.7x slower than fp16 compile, on an H200)
        front = exact_front({i: p for i, p in points.items() if i not in estimated}, self.axes)
        verdicts: dict[int, tuple[bool, str | None]] = {}
        for index, figures in points.items():
            rivals = [j for j in front if j != index and dominates(points[j], figures, self.axes, self.margin)]
            if rivals:
                rival = min(rivals, key=lambda j: points[j]["latency_ms"])
                verdicts[index] = (False, why_dominated(figures, points[rival], self.axes, label(self.settings[rival])))
                continue
            twin = self._unquantized_twin(index, points, estimated)
            if twin is not None:
                verdicts[index] = (False, f"within {100 * self.margin:g}% of {label(self.settings[twin])} on every axis "
                                          "without quantizing")
                continue
            verdicts[index] = (True, None)
        return verdicts

    def _unquantized_twin(self, index: int, points: dict[int, dict[str, float]], estimated: set[int]) -> int | None:
        """A measured setting without quantization that is within the margin of this quantized
        one on every axis: quantization that buys nothing here is not worth searching (and its
        accuracy risk), as with fp8 on a ResNet, where it reaches the classifier alone."""
        if self.settings[index]["quantization"] == "none":
            return None
        mine = points[index]
        for j, theirs in points.items():
            if j in estimated or self.settings[j]["quantization"] != "none":
                continue
            if all(theirs[a] <= mine[a] * (1 + self.margin) for a in self.axes):
                return j
        return None

    def result(self) -> dict[str, Any]:
        at_zero = self._verdict_at(0.0, with_estimates=True)
        at_high = self._verdict_at(self.high, with_estimates=False) if self.high > 0 else {}
        failed = self._failed_values()
        rows = []
        for index, setting in enumerate(self.settings):
            rows.append(self._row(index, setting, at_zero, at_high, failed))
        if not any(row["kept"] for row in rows):  # nothing measured: the screen cannot narrow anything
            unfailed = [row for row in rows if not row["reason"].startswith("failed")] or rows
            for row in unfailed:
                row["kept"], row["reason"] = True, f"kept: no setting could be measured ({row['reason']})"
        start = self._ladder_start(rows)
        shapes = self._shape_rows()
        kept = {f: [v for v in getattr(self.space, f) if any(r["kept"] and r["setting"][f] == v for r in rows)]
                for f in DEPLOYMENT}
        if shapes:
            for f in SHAPE:
                kept[f] = [v for v in getattr(self.space, f) if any(r["kept"] and r["shape"][f] == v for r in shapes)]
        return {
            "version": VERSION, "seconds": self._elapsed(), "budget_s": self.budget_s, "margin": self.margin,
            "setting_timeout_s": self.timeout_s, "axes": self.axes, "ratios": [0.0] + ([self.high] if self.high > 0 else []),
            "shape_ratios": [self.high, self.mid] if shapes else [], "shape_setting": getattr(self, "shape_setting", None),
            "prune_shape": self.prune_shape if self.high > 0 else None, "ladder": self.ladder, "ladder_start": start,
            "baseline_accuracy": self.baseline_accuracy, "accuracy_floor": self.floor,
            "baseline_balanced_accuracy": self.baseline_balanced, "balanced_accuracy_floor": self.balanced_floor,
            "settings": rows, "shapes": shapes, "kept": kept,
            "deployments": [[row["setting"][f] for f in DEPLOYMENT] for row in rows if row["kept"]],
        }

    def _ladder_start(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Where the search's prune ladder starts (search/first_trials.py): the setting and ratio
        timed fastest pruned on the first cost axis, among settings whose accuracy is not known to
        fall short and that did not fail unpruned. Within the margin of the fastest a kept setting
        is preferred (measurement noise does not bring back a setting the rules dropped); a setting
        timed faster than that is kept for it, and its row says so. On an H100 the screen timed
        fp16 channels_last fp8_dynamic compile+cudagraphs at 1.474 ms at prune 0.85 and dropped it
        as tying with no quantization at 0.9 (2.610 against 2.617 ms), where the unquantized setting
        was never timed below the top; the ladder, reading the kept settings only, started there
        at 0.9. None when nothing was timed pruned."""
        axis = self.axes[0]
        timed = [(figures[axis], -ratio, index) for (index, ratio), figures in self.measured.items()
                 if ratio > 0 and "error" not in figures and self._acceptable(self.settings[index]) is not False
                 and not (rows[index]["unpruned"] and "error" in rows[index]["unpruned"])]
        if not timed:
            return None
        best = min(timed)[0]
        near = [t for t in timed if rows[t[2]]["kept"] and t[0] <= best * (1 + self.margin)]
        value, negative, index = min(near or timed)
        row = rows[index]
        if not row["kept"]:
            row["kept"] = True
            unit = "ms" if axis == "latency_ms" else "MB"
            row["reason"] = (f"the fastest timed pruned ({value:.3f} {unit} at prune {-negative:g}): the prune ladder "
                             f"starts there (else {row['reason']})")
        return {"setting": [self.settings[index][f] for f in DEPLOYMENT], "ratio": -negative, axis: value}

    def _row(self, index: int, setting: dict, at_zero: dict, at_high: dict,
             failed: dict[tuple[str, Any], list[int]]) -> dict[str, Any]:
        unpruned, pruned = self.measured.get((index, 0.0)), self.measured.get((index, self.high))
        accuracy = self._accuracy_of(setting)
        pair = (setting["precision"], setting["quantization"])
        source = "baseline" if pair == ("fp32", "none") else (self.accuracy[pair][1] if pair in self.accuracy else None)
        row: dict[str, Any] = {
            "setting": setting, "label": label(setting), "unpruned": unpruned, "pruned": pruned,
            "estimate": self.estimates.get(index) if unpruned is None else None,
            "accuracy": accuracy, "balanced_accuracy": self._balanced_of(setting), "accuracy_from": source,
        }
        coverage = ""
        figures = unpruned if unpruned and "error" not in unpruned else (pruned if pruned and "error" not in pruned else None)
        if setting["quantization"] != "none" and figures is not None:
            coverage = f" (quantizes {figures['quantized_layers']} of {figures['weight_layers']} weight layers)"
            row["coverage"] = [figures["quantized_layers"], figures["weight_layers"]]
        if unpruned is not None and "error" in unpruned:
            row["kept"], row["reason"] = False, f"failed: {unpruned['error']}"
            return row
        acceptable = self._acceptable(setting)
        if acceptable is False:
            row["kept"], row["reason"] = False, f"{self._shortfall(setting)}{coverage}"
            return row
        zero, high = at_zero.get(index), at_high.get(index)
        if zero is None and high is None and unpruned is None:
            failures = next(((key, tried) for key, tried in failed.items() if setting[key[0]] == key[1]), None)
            if failures is not None:  # the evidence is its value's: failed in every setting tried
                (factor, value), tried = failures
                last = self.measured[(tried[-1], 0.0)]["error"]
                row["kept"], row["reason"] = False, (f"not measured: budget; {factor} {value} failed in every setting "
                                                     f"tried ({', '.join(label(self.settings[i]) for i in tried)}: {last})")
                return row
        if zero is None and high is None:  # no evidence either way: the screen only drops on evidence
            row["kept"], row["reason"] = True, "not measured within the screen's budget (no estimate either): kept"
            return row
        estimated = unpruned is None
        not_measured = "not measured: budget"
        if estimated and (self.estimates.get(index) or {}).get("stand_in"):
            not_measured += f"; {self.estimates[index]['stand_in']}"
        where = f" on an estimate ({not_measured})" if estimated else ""
        on_a_front = bool((zero and zero[0]) or (high and high[0]))
        beaten = self._beaten_at_both_ratios(index) if on_a_front else None
        if beaten is not None:
            row["kept"], row["reason"] = False, beaten + coverage
            return row
        if on_a_front:
            at = [] if not (zero and zero[0]) else ["unpruned" + where]
            if high and high[0]:
                at.append(f"at prune {self.high:g}")
            row["kept"], row["reason"] = True, f"on the front {' and '.join(at)}{coverage}"
            if acceptable is None:
                row["reason"] += "; accuracy not measured"
            return row
        reason = zero[1] if zero else "not measured unpruned"
        if estimated:
            reason = f"estimated {reason} ({not_measured})"
        if high is not None:
            reason += f"; at prune {self.high:g}: {high[1]}"
        row["kept"], row["reason"] = False, reason + coverage
        return row

    def _beaten_at_both_ratios(self, index: int) -> str | None:
        """Why a setting measured unpruned and pruned goes although it ties on a front: another
        setting measured at both ratios is within the margin of it or better at both, and better
        by more than the margin at one. On an H200 (ELPV, ResNet-18 at 80 px) fp16 compile and
        compile+cudagraphs tied unpruned (1.05 and 1.03 ms); pruned, the graphs remove the launch
        overhead that dominates (0.34 ms at prune 0.85), and the search's most pruned point, which
        drew compile, took 1.50-2.36 ms at prune 0.81."""
        if self.high <= 0:
            return None
        mine = {ratio: self._ok(index, ratio) for ratio in (0.0, self.high)}
        if None in mine.values():
            return None
        for rival, setting in enumerate(self.settings):
            if rival == index or self._acceptable(setting) is False:
                continue
            theirs = {ratio: self._ok(rival, ratio) for ratio in (0.0, self.high)}
            if None in theirs.values():
                continue
            if any(theirs[r][a] > mine[r][a] * (1 + self.margin) for r in mine for a in self.axes):
                continue
            wins = [r for r in mine if dominates(theirs[r], mine[r], self.axes, self.margin)]
            if wins:
                where = "unpruned" if wins[0] == 0.0 else f"at prune {wins[0]:g}"
                other = f"at prune {self.high:g}" if wins[0] == 0.0 else "unpruned"
                return (f"{why_dominated(mine[wins[0]], theirs[wins[0]], self.axes, label(setting))} {where}, "
                        f"and within {100 * self.margin:g}% of it or slower {other}")
        return None

    def _shape_rows(self) -> list[dict[str, Any]]:
        """A shape is dropped when, at a screened ratio, another shape is faster by more than the
        margin while keeping at least as much of the model (weights): at one nominal ratio a
        coarser rounding keeps more channels, so it is slower for being bigger, and bigger may be
        what the accuracy needs (an H200 run dropped the expert's /16 for /8 that way)."""
        rows = []
        for index, shape in enumerate(self.shapes):
            latency = {str(r): self.shape_latency.get((index, r)) for r in (self.high, self.mid)}
            measured = {r: f for r, f in ((r, self.shape_latency.get((index, r))) for r in (self.high, self.mid)) if f}
            row: dict[str, Any] = {"shape": shape, "label": shape_label(shape), "latency": latency}
            ok = {r: f for r, f in measured.items() if "error" not in f}
            if not measured:
                row["kept"], row["reason"] = True, "not measured within the screen's budget: kept"
            elif not ok:
                row["kept"], row["reason"] = False, f"failed: {next(iter(measured.values()))['error']}"
            else:
                beaten = {r: self._shape_rival(index, r, figures) for r, figures in ok.items()}
                if any(rival is None for rival in beaten.values()):
                    row["kept"], row["reason"] = True, "no shape as big is faster at " + " and ".join(
                        f"prune {r:g}" for r, rival in beaten.items() if rival is None)
                else:
                    row["kept"], row["reason"] = False, "; ".join(
                        f"at prune {r:g}: {figures['latency_ms'] / rival[1]['latency_ms']:.2f}x the latency of "
                        f"{shape_label(self.shapes[rival[0]])}, which keeps as many weights"
                        for (r, figures), rival in zip(ok.items(), beaten.values()))
            rows.append(row)
        return rows

    def _shape_rival(self, index: int, ratio: float, mine: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """The fastest other shape at `ratio` that beats this one by more than the margin while
        keeping at least as many weights; None when there is none."""
        rivals = [(j, f) for (j, r), f in self.shape_latency.items()
                  if r == ratio and j != index and "error" not in f
                  and f["latency_ms"] * (1 + self.margin) < mine["latency_ms"]
                  and f.get("weight_mb", 0.0) >= mine.get("weight_mb", math.inf)]
        return min(rivals, key=lambda rival: rival[1]["latency_ms"]) if rivals else None
