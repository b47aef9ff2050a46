"""The screen's verdicts, replayed on figures an H200 measured (benchmarks/results/screen/): the
rules that turn measurements into kept and dropped settings, without a process or a GPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

from slimtune.search.screen import DEPLOYMENT, Screen
from slimtune.spaces import SearchSpace
from slimtune.spaces.precision import PRECISION_CHOICES
from slimtune.spaces.quantization import QUANTIZATION_CHOICES
from slimtune.spaces.runtime import RUNTIME_CHOICES

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results" / "screen" / "2026-12-01-h200-resnet18-b256-arms.json"


class _Measured:
    """What the screen reads of an evaluator before it measures anything."""

    def __init__(self, baseline_accuracy: float):
        self.baseline_accuracy = baseline_accuracy


def replay(margin: float = 0.05) -> dict:
    stored = json.loads(RESULTS.read_text())["arms"]["every-choice"]["screen"]
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
    tie, so neither drops the other."""
    rows = replay(margin=0.5)
    assert rows["fp16 channels_last eager"]["kept"] and rows["fp16 channels_last cudagraphs"]["kept"]
