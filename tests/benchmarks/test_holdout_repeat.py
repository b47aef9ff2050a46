"""benchmarks/holdout_repeat.py's verdict: which front points' test drops fall inside their
validation intervals, which are over the limit, and whether the issue's target is met."""

from __future__ import annotations

from types import SimpleNamespace

from tests.benchmarks import load_benchmark

holdout = load_benchmark("holdout_repeat")


def point(validation: list[float], test: float, test_ci: list[float]) -> dict:
    return {"trial": 1, "validation_drop_pts": sum(validation) / 2, "validation_ci_pts": validation,
            "validation_examples": 295, "test_drop_pts": test, "test_ci_pts": test_ci}


def test_inside_over_and_the_verdict() -> None:
    points = [point([-2.0, 2.0], 1.5, [0.0, 3.0]),    # inside, under the limit
              point([-1.0, 1.0], 3.0, [1.5, 4.5]),    # outside; above the limit, but its interval reaches it
              point([-1.0, 1.0], 4.0, [2.5, 5.5])]    # outside; its whole test interval above the limit
    holdout.judge(points, allowed_pts=2.0)
    assert [p["inside"] for p in points] == [True, False, False]
    assert [p["test_drop_above_limit"] for p in points] == [False, True, True]
    assert [p["over"] for p in points] == [False, False, True]
    total = holdout.summary([{"points": points}])
    assert (total["front_points"], total["inside"], total["over"], total["test_drop_above_limit"]) == (3, 1, 1, 2)
    assert total["mean_validation_interval_width_pts"] == (4.0 + 2.0 + 2.0) / 3 and not total["met"]
    assert holdout.summary([{"points": points[:1] * 9 + points[1:2]}])["met"]  # 90% inside, none over


def test_the_constrained_figure_is_the_studys() -> None:
    limits = SimpleNamespace(max_balanced_accuracy_drop=0.02, max_accuracy_drop=0.01)
    assert holdout.constrained(SimpleNamespace(constraints=limits)) == ("balanced_accuracy", 0.02)
    limits = SimpleNamespace(max_balanced_accuracy_drop=None, max_accuracy_drop=0.01)
    assert holdout.constrained(SimpleNamespace(constraints=limits)) == ("accuracy", 0.01)
