"""benchmarks/gpu_study.py's arms without a GPU: what an arm had found by a given wall time
(the budget is checked between trials, so arms end at different walls) and the table."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest

from tests.benchmarks import load_benchmark

@pytest.fixture(scope="module")
def gpu_study():
    return load_benchmark("gpu_study")


def _trial(number: int, state: str, finished_s: float | None, start: datetime.datetime):
    done = None if finished_s is None else start + datetime.timedelta(seconds=finished_s)
    return SimpleNamespace(number=number, state=SimpleNamespace(name=state), datetime_complete=done)


def test_the_timeline_says_what_an_arm_had_found_by_each_wall_time(gpu_study) -> None:
    start = datetime.datetime(2026, 12, 1, 7, 52)
    baseline = {"latency_ms_median": 25.0, "accuracy": 0.99}
    measured = {0: (25.0, 0.99), 1: (3.1, 1.0), 2: (2.0, 0.97), 4: (1.7, 0.985)}
    rows = {n: SimpleNamespace(measurement={"latency_ms": lat, "accuracy": acc}) for n, (lat, acc) in measured.items()}
    trials = [_trial(0, "COMPLETE", 60, start), _trial(1, "COMPLETE", 174, start), _trial(2, "COMPLETE", 190, start),
              _trial(3, "FAIL", 200, start), _trial(4, "COMPLETE", 268, start)]
    points = gpu_study.timeline(trials, rows, baseline, start)
    assert [p["trial"] for p in points] == [0, 1, 2, 4]
    assert gpu_study.best_by(points, 220)["trial"] == 1  # trial 2 is faster, but 2 points down
    assert gpu_study.best_by(points, 268)["speedup_vs_fp32_eager"] == pytest.approx(25 / 1.7)
    assert gpu_study.best_by(points, 30) is None
