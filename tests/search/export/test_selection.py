"""Choosing a point of the front: rules and the knee, on hand-made fronts."""

from __future__ import annotations

import pytest

from slimtune.search.export.selection import SelectionError, knee, parse_rule, pick

FRONT = [
    {"trial": 3, "latency_ms": 1.0, "peak_memory_mb": 0.9, "accuracy": 0.95, "accuracy_drop": 0.030},
    {"trial": 5, "latency_ms": 1.5, "peak_memory_mb": 0.5, "accuracy": 0.98, "accuracy_drop": 0.005},
    {"trial": 7, "latency_ms": 4.0, "peak_memory_mb": 2.0, "accuracy": 0.99, "accuracy_drop": -0.002},
]


def test_rules_pick_from_the_front():
    assert pick(FRONT, "min latency") == 3
    assert pick(FRONT, "min latency where accuracy_drop <= 0.01") == 5
    assert pick(FRONT, "min memory where latency_ms <= 2") == 5
    assert pick(FRONT, "max accuracy where latency <= 2 and memory < 1") == 5
    assert parse_rule("min p95").metric == "latency_p95_ms"


def test_a_rule_nothing_satisfies_shows_the_closest_points():
    with pytest.raises(SelectionError, match=r"no point .* closest: trial 7 \(accuracy_drop=-0.002\); trial 5"):
        pick(FRONT, "min latency where accuracy_drop <= -0.01")


@pytest.mark.parametrize("rule, message", [
    ("fastest", "must read 'min|max METRIC"),
    ("min speed", "unknown metric 'speed'"),
    ("min latency if accuracy > 1", "expected 'where CONDITION'"),
    ("min latency where accuracy ~ 1", "condition 'accuracy ~ 1' must read"),
])
def test_bad_rules_are_one_line_errors(rule, message):
    with pytest.raises(SelectionError, match=message):
        parse_rule(rule)


def test_knee_is_closest_to_the_ideal_point():
    objectives = {"latency_ms": "minimize", "peak_memory_mb": "minimize", "accuracy": "maximize"}
    # scaled: trial 3 (0, 0.27, 1), trial 5 (0.17, 0, 0.25), trial 7 (1, 1, 0)
    assert knee(FRONT, objectives) == 5
    assert knee(FRONT[:1], objectives) == 3
    with pytest.raises(SelectionError):
        knee([], objectives)
