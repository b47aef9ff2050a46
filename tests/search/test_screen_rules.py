"""The screen's verdicts, replayed on figures an H200 measured (benchmarks/results/screen/): the
rules that turn measurements into kept and dropped settings, without a process or a GPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest

from slimtune.search.first_trials import first_trials
from slimtune.search.screen import Screen, narrow
from slimtune.search.screen.settings import DEPLOYMENT, label
from slimtune.search.screen.target import FAILED_VALUE_PROBES
from slimtune.spaces import Recipe, SearchSpace
from slimtune.spaces.precision import PRECISION_CHOICES
from slimtune.spaces.quantization import QUANTIZATION_CHOICES
from slimtune.spaces.runtime import RUNTIME_CHOICES

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results" / "screen" / "2026-12-01-h200-resnet18-b256-arms.json"


class _Measured:
    """What the screen reads of an evaluator before it measures anything."""

    def __init__(self, baseline_accuracy: float):
        self.baseline_accuracy = baseline_accuracy


def replay(margin: float = 0.05, results: Path = RESULTS) -> dict:
    """The verdicts on what the every-choice arm's screen in `results` measured unpruned."""
    stored = json.loads(results.read_text())["arms"]["every-choice"]["screen"]
    space = SearchSpace(precision=PRECISION_CHOICES, memory_format=("contiguous", "channels_last"),
                        quantization=QUANTIZATION_CHOICES, runtime=RUNTIME_CHOICES)
    screen = Screen(_Measured(stored["baseline_accuracy"]), space, objectives={"latency_ms": "minimize", "weight_mb": "minimize"},
                    max_accuracy_drop=0.01, budget_s=30, setting_timeout_s=30, margin=margin)
    screen.started = time.perf_counter()
    for row in stored["settings"]:
        if row["unpruned"] is None:
            continue
        index = screen.index[tuple(row["setting"][f] for f in DEPLOYMENT)]
        screen.measured[(index, 0.0)] = row["unpruned"]
        pair = (row["setting"]["precision"], row["setting"]["quantization"])
        if row["accuracy"] is not None and pair != ("fp32", "none"):
            screen.accuracy.setdefault(pair, (row["accuracy"], row["accuracy_from"]))
    fits = screen._fit()
    screen.estimates = {i: screen._estimate(i, fits) for i in range(len(screen.settings))}
    return {row["label"]: row for row in screen.result()["settings"]}


def test_measured_settings_are_kept_or_dropped_for_what_they_measured() -> None:
    rows = replay()
    assert rows["fp16 channels_last cudagraphs"]["kept"]
    assert rows["fp32 contiguous eager"]["reason"] == "4.7x slower than fp16 channels_last cudagraphs"
    # int8 weight-only halves the weights (all 21 layers): on the weight axis it pays
    assert rows["fp16 channels_last int8_weight_only eager"]["kept"]
    assert "quantizes 21 of 21 weight layers" in rows["fp16 channels_last int8_weight_only eager"]["reason"]
    # fp8 reaches the classifier alone: within the margin of no quantization, it goes
    fp8 = rows["fp16 channels_last fp8_dynamic eager"]
    assert not fp8["kept"] and fp8["reason"].startswith("within 5% of fp16 channels_last eager on every axis")
    assert "quantizes 1 of 21 weight layers" in fp8["reason"]
    assert rows["fp16 channels_last int4_weight_only eager"]["reason"].startswith("accuracy 0.9750 (drop 1.67 pts) below")
    assert rows["fp16 channels_last compile"]["reason"].startswith("failed: timeout after")


def test_unmeasured_settings_are_judged_on_the_fitted_prediction_and_say_so() -> None:
    rows = replay()
    estimated = rows["fp32 channels_last cudagraphs"]
    assert estimated["unpruned"] is None and estimated["estimate"] is not None
    assert not estimated["kept"] and estimated["reason"].startswith("estimated ") and "(not measured: budget)" in estimated["reason"]
    # no compile was measured working: nothing compiled can be predicted, so it stays
    unknown = rows["fp16 channels_last compile+cudagraphs"]
    assert unknown["kept"] and unknown["estimate"] is None


def test_a_wider_margin_drops_no_more_than_it_must() -> None:
    """With a margin of 50%, fp16 channels_last eager (5.46 ms) and its CUDA graphs (5.37 ms)
    tie, so neither drops the other; int8 weight-only (5.97 ms, half the weights) drops both."""
    rows = replay(margin=0.5)
    eager, graphs = rows["fp16 channels_last eager"], rows["fp16 channels_last cudagraphs"]
    assert "cudagraphs" not in eager["reason"] and "fp16 channels_last eager" not in graphs["reason"]
    assert eager["reason"] == graphs["reason"] == "2.0x the weights of fp16 channels_last int8_weight_only eager"


# -- the second H200 run (benchmarks/results/screen/*-arms-run2.log): the screen measured these
# twelve settings before its budget ran out, one cold fp8 compile taking 68 s of it
RUN2 = {
    "fp32 contiguous eager": (25.304, 1843.1, 44.77), "tf32 contiguous eager": (12.139, 1998.3, 44.77),
    "fp16 contiguous eager": (8.459, 1024.3, 22.38), "bf16 contiguous eager": (9.604, 1127.1, 22.38),
    "fp16 channels_last eager": (5.532, 1024.3, 22.38),
    "fp16 channels_last int8_weight_only eager": (6.092, 1013.2, 11.33),
    "fp16 channels_last int8_dynamic eager": (7.509, 1024.3, 22.38),
    "fp16 channels_last int4_weight_only eager": (6.107, 1013.2, 11.33),
    "fp16 channels_last fp8_dynamic eager": (5.491, 1024.3, 22.38),
    "fp16 channels_last fp8_dynamic cudagraphs": (5.373, 1101.4, 22.38),
    "fp16 channels_last fp8_dynamic compile": (3.484, 613.3, 22.38),
}


def every_choice() -> SearchSpace:
    return SearchSpace(precision=PRECISION_CHOICES, memory_format=("contiguous", "channels_last"),
                       quantization=QUANTIZATION_CHOICES, runtime=RUNTIME_CHOICES)


def replay_run2(measured: dict = RUN2, objectives: tuple = ("latency_ms", "accuracy")) -> Screen:
    screen = Screen(_Measured(0.9917), every_choice(), objectives=dict.fromkeys(objectives, "minimize"),
                    max_accuracy_drop=0.01, budget_s=30, setting_timeout_s=30, margin=0.05)
    screen.started = time.perf_counter()
    labels = {label(s): i for i, s in enumerate(screen.settings)}
    for name, (latency, peak, weights) in measured.items():
        index = labels[name]
        screen.measured[(index, 0.0)] = {"latency_ms": latency, "peak_memory_mb": peak, "weight_mb": weights,
                                         "quantized_layers": 21, "weight_layers": 21}
        setting = screen.settings[index]
        screen.accuracy[(setting["precision"], setting["quantization"])] = (0.99, name)
    screen.estimates = {i: screen._estimate(i, screen._fit()) for i in range(len(screen.settings))}
    return screen


def test_a_graphed_runtime_never_measured_is_estimated_from_its_base_and_says_so() -> None:
    """Run 2 kept 40 unmeasured compile+cudagraphs settings (no estimate), so nothing narrowed."""
    rows = {row["label"]: row for row in replay_run2().result()["settings"]}
    fp32 = rows["fp32 contiguous compile+cudagraphs"]
    assert not fp32["kept"] and "compile+cudagraphs taken as compile" in fp32["reason"]
    assert fp32["reason"].startswith("estimated ") and "slower than fp16 channels_last fp8_dynamic compile" in fp32["reason"]
    graphed = rows["fp16 channels_last fp8_dynamic compile+cudagraphs"]
    assert graphed["kept"] and "taken as compile" in graphed["reason"]
    still_kept = [name for name, row in rows.items() if row["kept"] and row["setting"]["runtime"] == "compile+cudagraphs"]
    assert len(still_kept) < 10, still_kept


def test_the_walk_prefers_the_plainest_setting_within_the_margin() -> None:
    """fp8 was 0.7% faster than no quantization in eager (noise): the walk must stay unquantized."""
    screen = replay_run2({name: RUN2[name] for name in ("fp16 channels_last eager", "fp16 channels_last fp8_dynamic eager")})
    assert label(screen.settings[screen._fastest(0.0)]) == "fp16 channels_last eager"
    screen = replay_run2({"fp16 channels_last eager": (5.532, 1, 1), "fp16 channels_last fp8_dynamic eager": (4.0, 1, 1)})
    assert label(screen.settings[screen._fastest(0.0)]) == "fp16 channels_last fp8_dynamic eager"


def test_the_search_samples_only_the_kept_settings_as_one_choice() -> None:
    """With weights an objective too, weight-only quantization keeps settings in many
    runtimes and precisions: their values' product would bring the dropped ones back."""
    result = replay_run2(objectives=("latency_ms", "weight_mb")).result()
    space = narrow(every_choice(), result)
    kept = {tuple(s) for s in result["deployments"]}
    assert space.deployments and set(space.deployments) == kept
    assert "contiguous" in space.memory_format and "eager" in space.runtime  # each value survives somewhere...
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(200):
        recipe = space.suggest(study.ask())
        setting = tuple(getattr(recipe, f) for f in DEPLOYMENT)
        assert setting in kept  # ...but no dropped combination of them comes back
        assert setting != ("fp16", "contiguous", "none", "eager")
    assert space.allows(Recipe(precision="fp16", runtime="eager")) is not None
    # a screen stored before settings were kept as one choice narrows each factor, as it did then
    old = {key: value for key, value in result.items() if key != "deployments"}
    assert narrow(every_choice(), old).deployments is None


def test_the_first_trials_start_from_the_screens_winners() -> None:
    result = replay_run2(objectives=("latency_ms", "weight_mb")).result()
    params = [trial.params for trial in first_trials(narrow(every_choice(), result), result)]
    # nothing was measured pruned, so no prune ladder; the fastest measured, then the smallest weights measured (int8 weight-only, 11.33 MB)
    assert params == [{"deployment": "fp16/channels_last/fp8_dynamic/compile"},
                      {"deployment": "fp16/channels_last/int8_weight_only/eager"}]
    # kept settings that make a whole product are sampled factor by factor: so are the winners
    result = replay_run2().result()
    assert [t.params for t in first_trials(narrow(every_choice(), result), result)] == [
        {"quantization": "fp8_dynamic", "runtime": "compile"}]


class _Timed:
    """An evaluator whose settings' figures follow simple rules, and which remembers what it built."""

    baseline_accuracy = 0.9

    def __init__(self):
        self.built: list[Recipe] = []

    def screen(self, recipe: Recipe, *, accuracy: bool, timeout_s: float) -> dict:
        self.built.append(recipe)
        latency = {"eager": 4.0, "cudagraphs": 3.5, "compile": 2.0, "compile+cudagraphs": 1.9}[recipe.runtime]
        latency *= (1 - recipe.prune_ratio) * (1.2 if recipe.prune_round_to == 1 else 1.0)
        return {"latency_ms": latency, "peak_memory_mb": 10.0, "weight_mb": 5.0, "quantized_layers": 0,
                "weight_layers": 3, "accuracy": 0.9}


def test_shapes_are_screened_without_compiling() -> None:
    """A compile per pruned shape would eat the budget; the shape is timed in the fastest
    setting's graphed, uncompiled twin."""
    space = SearchSpace(runtime=RUNTIME_CHOICES, prune_ratio=(0.0, 0.8), prune_round_to=(1, 8), prune_scope=("uniform",))
    evaluator = _Timed()
    result = Screen(evaluator, space, objectives={"latency_ms": "minimize"}, max_accuracy_drop=None, budget_s=60,
                    setting_timeout_s=5, margin=0.05, log=lambda line: None).run()
    shapes = [r for r in evaluator.built if r.prune_ratio > 0 and r.prune_round_to == 1]
    assert shapes and all(r.runtime == "cudagraphs" for r in shapes)
    assert result["shape_setting"] == "fp32 contiguous cudagraphs"
    assert {row["label"]: row["kept"] for row in result["shapes"]} == {"/8 uniform": True, "/1 uniform": False}


class _Imbalanced(_Timed):
    """fp16 keeps top-1 but loses the minority class: balanced accuracy falls 10 points."""

    baseline_balanced_accuracy = 0.8

    def screen(self, recipe: Recipe, *, accuracy: bool, timeout_s: float) -> dict:
        figures = super().screen(recipe, accuracy=accuracy, timeout_s=timeout_s)
        figures["latency_ms"] *= 0.5 if recipe.precision == "fp16" else 1.0
        figures["balanced_accuracy"] = 0.7 if recipe.precision == "fp16" else 0.8
        return figures


def test_a_balanced_accuracy_constraint_drops_what_loses_the_minority_class() -> None:
    space = SearchSpace(precision=("fp32", "fp16"))
    rows = lambda result: {row["label"]: row for row in result["settings"]}  # noqa: E731
    constrained = Screen(_Imbalanced(), space, objectives={"latency_ms": "minimize"}, max_accuracy_drop=None,
                         max_balanced_accuracy_drop=0.01, budget_s=60, setting_timeout_s=5, margin=0.05,
                         log=lambda line: None).run()
    fp16 = rows(constrained)["fp16 contiguous eager"]
    assert not fp16["kept"] and fp16["balanced_accuracy"] == 0.7
    assert fp16["reason"] == "balanced accuracy 0.7000 (drop 10.00 pts) below the floor 0.7900"
    assert constrained["balanced_accuracy_floor"] == pytest.approx(0.79)
    free = Screen(_Imbalanced(), space, objectives={"latency_ms": "minimize"}, max_accuracy_drop=0.01,
                  budget_s=60, setting_timeout_s=5, margin=0.05, log=lambda line: None).run()
    assert rows(free)["fp16 contiguous eager"]["kept"]  # top-1 alone did not move


class _Overflowing(_Timed):
    """int8 weight-only gives non-finite logits in fp16 (as a ResNet-50's did on an H200) and
    works in bf16 (`works_in_bf16`); it halves the weights where it works."""

    def __init__(self, works_in_bf16: bool):
        super().__init__()
        self.works_in_bf16 = works_in_bf16

    def screen(self, recipe: Recipe, *, accuracy: bool, timeout_s: float) -> dict:
        figures = super().screen(recipe, accuracy=accuracy, timeout_s=timeout_s)
        if recipe.quantization == "int8_weight_only":
            if recipe.precision == "fp16" or not self.works_in_bf16:
                raise FloatingPointError("non-finite logits during evaluation")
            figures["weight_mb"] = 2.5
        figures["latency_ms"] *= 0.8 if recipe.precision in ("fp16", "bf16") else 1.0
        return figures


def _overflow_screen(works_in_bf16: bool) -> tuple[_Overflowing, dict[str, dict]]:
    space = SearchSpace(precision=("fp32", "fp16", "bf16"), quantization=("none", "int8_weight_only"),
                        runtime=("eager", "compile"))
    evaluator = _Overflowing(works_in_bf16)
    # each setting takes half a second, and the budget runs out after the walk (7 settings) and
    # the probes: the other settings are judged unmeasured
    screen = Screen(evaluator, space, objectives={"latency_ms": "minimize", "weight_mb": "minimize"},
                    max_accuracy_drop=None, budget_s=8.0, setting_timeout_s=5, margin=0.05, log=lambda line: None)
    screen._elapsed = lambda: 0.5 * len(evaluator.built)
    result = screen.run()
    return evaluator, {row["label"]: row for row in result["settings"]}


def test_a_value_that_failed_in_one_precision_is_tried_in_another_and_estimated_from_there() -> None:
    evaluator, rows = _overflow_screen(works_in_bf16=True)
    probes = [r for r in evaluator.built if r.quantization == "int8_weight_only" and r.precision != "fp16"]
    assert probes and probes[0].precision in ("fp32", "bf16") and probes[0].runtime == "eager"
    unmeasured = [row for row in rows.values() if row["setting"]["quantization"] == "int8_weight_only"
                  and row["unpruned"] is None]
    assert unmeasured and all(row["estimate"] is not None for row in unmeasured)  # int8's effect is known now
    assert not any("no estimate either" in row["reason"] for row in rows.values())


def test_a_value_that_failed_wherever_it_was_tried_is_dropped_on_that_evidence() -> None:
    evaluator, rows = _overflow_screen(works_in_bf16=False)
    tried = [r for r in evaluator.built if r.quantization == "int8_weight_only"]
    probes = [r for r in tried if r.precision != "fp16"]  # the walk's tries were all fp16
    assert len(probes) == FAILED_VALUE_PROBES and probes[0].runtime == "eager"
    unmeasured = [row for row in rows.values() if row["setting"]["quantization"] == "int8_weight_only"
                  and row["unpruned"] is None]
    assert unmeasured and not any(row["kept"] for row in unmeasured)
    assert all("quantization int8_weight_only failed in every setting tried" in row["reason"]
               and "non-finite logits" in row["reason"] for row in unmeasured)
    assert any(row["kept"] for row in rows.values() if row["setting"]["quantization"] == "none")


class _Rounded(_Timed):
    """/16 keeps more channels than /8 at the same nominal ratio (bigger, slower); /1 keeps the
    same weights as /8 and is slower (odd channel counts)."""

    def screen(self, recipe: Recipe, *, accuracy: bool, timeout_s: float) -> dict:
        figures = super().screen(recipe, accuracy=accuracy, timeout_s=timeout_s)
        if recipe.prune_ratio > 0 and recipe.prune_round_to == 16:
            figures["latency_ms"] *= 2.4
            figures["weight_mb"] = 6.0
        return figures


def test_a_coarser_shape_is_not_dropped_for_keeping_more_of_the_model() -> None:
    space = SearchSpace(runtime=("eager",), prune_ratio=(0.0, 0.85), prune_round_to=(1, 8, 16), prune_scope=("uniform",))
    result = Screen(_Rounded(), space, objectives={"latency_ms": "minimize"}, max_accuracy_drop=None, budget_s=60,
                    setting_timeout_s=5, margin=0.05, log=lambda line: None).run()
    shapes = {row["label"]: row for row in result["shapes"]}
    assert shapes["/16 uniform"]["kept"] and shapes["/16 uniform"]["reason"].startswith("no shape as big is faster")
    assert shapes["/8 uniform"]["kept"]
    assert not shapes["/1 uniform"]["kept"]
    assert "1.20x the latency of /8 uniform, which keeps as many weights" in shapes["/1 uniform"]["reason"]
    assert result["kept"]["prune_round_to"] == [8, 16]


# -- the ResNet-50 every-choice arm on an H200 (benchmarks/results/screen/*-resnet50-b256-arms-run2.json):
# its budget ran out with bf16 int4 unmeasured and predicted faster than anything measured
R50 = Path(__file__).parents[2] / "benchmarks" / "results" / "screen" / "2026-12-01-h200-resnet50-b256-arms-run2.json"


def test_an_estimate_on_the_front_does_not_shield_what_the_measured_front_beats() -> None:
    rows = replay(results=R50)
    assert rows["bf16 channels_last int4_weight_only compile+cudagraphs"]["kept"]  # no evidence against it
    assert rows["fp32 contiguous eager"]["reason"] == "7.7x slower than fp16 channels_last compile+cudagraphs"
    kept = [name for name, row in rows.items() if row["kept"] and row["unpruned"] is not None]
    assert kept == ["fp16 channels_last compile", "fp16 channels_last compile+cudagraphs"]


class _PrecisionBound(_Timed):
    """fp32 is 4x slower than fp16 whatever the runtime; a compile halves the latency."""

    def screen(self, recipe: Recipe, *, accuracy: bool, timeout_s: float) -> dict:
        figures = super().screen(recipe, accuracy=accuracy, timeout_s=timeout_s)
        figures["latency_ms"] = (10.0 if recipe.precision == "fp32" else 2.5) * (0.5 if recipe.runtime == "compile" else 1.0)
        return figures


def test_the_walk_does_not_compile_a_move_the_fit_predicts_to_lose() -> None:
    """The walk measures fp32 and fp16 eager, fp16 channels_last and fp16 compile; from there the
    move to fp32 compile is predicted 4x slower and skipped, fp16 channels_last compile measured,
    and the budget ends (each setting takes half a second of its 2.2 s for the walk)."""
    space = SearchSpace(precision=("fp32", "fp16"), memory_format=("contiguous", "channels_last"),
                        runtime=("eager", "compile"))
    evaluator, lines = _PrecisionBound(), []
    screen = Screen(evaluator, space, objectives={"latency_ms": "minimize"}, max_accuracy_drop=None, budget_s=2.2 / 0.6,
                    setting_timeout_s=5, margin=0.05, log=lines.append)
    screen._elapsed = lambda: 0.5 * len(evaluator.built)
    result = screen.run()
    assert ("fp32", "compile") not in {(r.precision, r.runtime) for r in evaluator.built}
    assert "screen: not compiling fp32 contiguous compile: predicted 4.0x slower than fp16 contiguous compile" in lines
    rows = {row["label"]: row for row in result["settings"]}
    assert rows["fp32 contiguous compile"]["reason"].startswith("estimated 4.0x slower than fp16 contiguous compile")
    assert rows["fp16 contiguous compile"]["kept"]


class _Int4Loses(_Timed):
    """int4 weight-only halves the weights and costs 20 points of accuracy, in fp16 as in bf16."""

    def screen(self, recipe: Recipe, *, accuracy: bool, timeout_s: float) -> dict:
        figures = super().screen(recipe, accuracy=accuracy, timeout_s=timeout_s)
        if recipe.quantization == "int4_weight_only":
            figures.update(weight_mb=2.5, accuracy=0.7)
        return figures


def test_a_setting_kept_on_an_estimate_gets_its_accuracy_measured() -> None:
    """The walk measures fp16 and bf16 unquantized and fp16 int4 (which loses 20 points); the
    budget then runs out, and bf16 int4, predicted to halve the weights at the same latency, would
    be kept on that estimate with no accuracy: one eager measurement settles it."""
    space = SearchSpace(precision=("fp16", "bf16"), quantization=("none", "int4_weight_only"), runtime=("eager",))
    evaluator = _Int4Loses()
    screen = Screen(evaluator, space, objectives={"latency_ms": "minimize", "weight_mb": "minimize"},
                    max_accuracy_drop=0.01, budget_s=2.4, setting_timeout_s=5, margin=0.05, log=lambda line: None)
    screen._elapsed = lambda: 0.5 * len(evaluator.built)  # the walk's three settings use up its share
    rows = {row["label"]: row for row in screen.run()["settings"]}
    assert [(r.precision, r.quantization) for r in evaluator.built][-1] == ("bf16", "int4_weight_only")
    bf16_int4 = rows["bf16 contiguous int4_weight_only eager"]
    assert not bf16_int4["kept"] and bf16_int4["reason"].startswith("accuracy 0.7000 (drop 20.00 pts) below the floor")


class _LaunchBound(_Timed):
    """Compile and compile+cudagraphs tie unpruned; pruned 80%, compile is launch-bound (1.0 ms)
    where the graphs take 0.4 ms. Eager wins nothing anywhere."""

    def screen(self, recipe: Recipe, *, accuracy: bool, timeout_s: float) -> dict:
        figures = super().screen(recipe, accuracy=accuracy, timeout_s=timeout_s)
        if recipe.prune_ratio > 0:
            figures["latency_ms"] = {"eager": 1.5, "cudagraphs": 0.8, "compile": 1.0, "compile+cudagraphs": 0.4}[recipe.runtime]
        elif recipe.runtime == "compile+cudagraphs":
            figures["latency_ms"] = 2.35  # 2% faster than compile (2.4 ms): a tie
        return figures


def test_a_setting_that_ties_unpruned_and_loses_pruned_goes() -> None:
    space = SearchSpace(runtime=RUNTIME_CHOICES, prune_ratio=(0.0, 0.8), prune_round_to=(8,), prune_scope=("uniform",))
    result = Screen(_LaunchBound(), space, objectives={"latency_ms": "minimize"}, max_accuracy_drop=None, budget_s=60,
                    setting_timeout_s=5, margin=0.05, log=lambda line: None).run()
    rows = {row["label"]: row for row in result["settings"]}
    assert rows["fp32 contiguous compile+cudagraphs"]["kept"]
    compile_only = rows["fp32 contiguous compile"]
    assert not compile_only["kept"]
    assert compile_only["reason"] == ("2.5x slower than fp32 contiguous compile+cudagraphs at prune 0.8, "
                                      "and within 5% of it or slower unpruned")
    assert result["kept"]["runtime"] == ["compile+cudagraphs"]


def test_a_setting_that_loses_unpruned_but_wins_pruned_stays() -> None:
    """The other way round is why pruned settings are screened at all: compile+cudagraphs is
    slower unpruned here (its graphs are not free) and wins pruned; both stay."""

    class _GraphsCostUnpruned(_LaunchBound):
        def screen(self, recipe, *, accuracy, timeout_s):
            figures = super().screen(recipe, accuracy=accuracy, timeout_s=timeout_s)
            if recipe.prune_ratio == 0 and recipe.runtime == "compile+cudagraphs":
                figures["latency_ms"] = 3.0
            return figures

    space = SearchSpace(runtime=("compile", "compile+cudagraphs"), prune_ratio=(0.0, 0.8), prune_round_to=(8,),
                        prune_scope=("uniform",))
    result = Screen(_GraphsCostUnpruned(), space, objectives={"latency_ms": "minimize"}, max_accuracy_drop=None,
                    budget_s=60, setting_timeout_s=5, margin=0.05, log=lambda line: None).run()
    assert result["kept"]["runtime"] == ["compile", "compile+cudagraphs"]


class _CompileFailsOrHangs:
    """A CPU target whose compile either fails (no working C++ compiler) or runs past the
    setting's limit (the worker process is killed and the setting reported as a timeout)."""

    baseline_accuracy = 0.9

    def __init__(self, error: str):
        self.error = error

    def screen(self, recipe: Recipe, *, accuracy: bool, timeout_s: float) -> dict:
        if recipe.runtime == "compile":
            raise RuntimeError(self.error)
        return {"latency_ms": 2.0 if recipe.precision == "fp32" else 9.0, "peak_memory_mb": 10.0, "weight_mb": 1.0,
                "quantized_layers": 0, "weight_layers": 3, "accuracy": 0.9}


@pytest.mark.parametrize("error", ["timeout after 38 s (screen)", "InductorError: CppCompileError: C++ compile error"])
def test_a_runtime_whose_compile_fails_or_takes_too_long_is_dropped_with_its_reason(error: str) -> None:
    """What an absent `runtimes` leaves to the screen on a CPU: eager and compile, both timed."""
    space = SearchSpace(precision=("fp32", "bf16"), runtime=("eager", "compile"))
    result = Screen(_CompileFailsOrHangs(error), space, objectives={"latency_ms": "minimize"}, max_accuracy_drop=0.01,
                    budget_s=30, setting_timeout_s=30, margin=0.05, log=lambda line: None).run()
    rows = {row["label"]: row for row in result["settings"]}
    assert rows["fp32 contiguous compile"]["reason"] == f"failed: {error}" and not rows["fp32 contiguous compile"]["kept"]
    assert result["kept"]["runtime"] == ["eager"] and rows["fp32 contiguous eager"]["kept"]
