"""Choosing one point of the feasible Pareto front: by a rule, or the knee.

A rule reads `min|max METRIC [where METRIC OP NUMBER [and ...]]`, e.g.
`min latency where accuracy_drop <= 0.01` or `min memory where latency_ms <= 2`.
`accuracy_drop` is a fraction of the baseline's accuracy (0.01 = one point), as in the
study file's `max_accuracy_drop`. Ties go to the lower trial number.

The knee: each objective of the study is scaled to [0, 1] over the front (0 = the front's
best value, 1 = its worst, in the objective's own direction); the knee is the point closest
(Euclidean) to the ideal point, where every objective is at its best. An objective that is
equal on the whole front counts 0 for every point.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

#: short names a rule may use for the stored figures
ALIASES = {"latency": "latency_ms", "p95": "latency_p95_ms", "memory": "peak_memory_mb", "weights": "weight_mb"}
METRICS = ("latency_ms", "latency_p95_ms", "peak_memory_mb", "weight_mb", "accuracy", "accuracy_drop",
           "params", "macs", "speedup_x", "memory_x")
OPERATORS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}
_CONDITION = re.compile(r"^\s*([A-Za-z_0-9]+)\s*(<=|>=|==|<|>)\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*$")


class SelectionError(ValueError):
    """A rule that does not parse, or that no point satisfies; the message is one line."""


@dataclass(frozen=True)
class Rule:
    goal: str  # "min" | "max"
    metric: str
    conditions: tuple[tuple[str, str, float], ...]
    text: str


def _metric(name: str, rule: str) -> str:
    name = ALIASES.get(name, name)
    if name not in METRICS:
        raise SelectionError(f"pick = {rule!r}: unknown metric {name!r}; allowed: "
                             f"{', '.join(METRICS)} (or {', '.join(ALIASES)})")
    return name


def parse_rule(text: str) -> Rule:
    words = text.strip().split(None, 2)
    if len(words) < 2 or words[0] not in ("min", "max"):
        raise SelectionError(f"pick = {text!r}: must read 'min|max METRIC [where METRIC <= NUMBER [and ...]]'")
    goal, metric = words[0], _metric(words[1], text)
    conditions = []
    if len(words) == 3:
        head, _, rest = words[2].partition(" ")
        if head != "where" or not rest.strip():
            raise SelectionError(f"pick = {text!r}: expected 'where CONDITION' after {metric!r}")
        for part in re.split(r"\s+and\s+", rest.strip()):
            match = _CONDITION.match(part)
            if not match:
                raise SelectionError(f"pick = {text!r}: condition {part.strip()!r} must read 'METRIC OP NUMBER' "
                                     f"with OP one of {', '.join(OPERATORS)}")
            conditions.append((_metric(match[1], text), match[2], float(match[3])))
    return Rule(goal, metric, tuple(conditions), text.strip())


def _violation(row: dict[str, Any], condition: tuple[str, str, float]) -> float:
    """How far a row is from satisfying a condition, relative to the bound (0 when it does)."""
    name, op, bound = condition
    value = row.get(name)
    if value is None:
        return math.inf
    if OPERATORS[op](value, bound):
        return 0.0
    return abs(value - bound) / max(abs(bound), 1e-9)


def pick(rows: list[dict[str, Any]], rule: Rule | str) -> int:
    """The trial number the rule chooses among `rows` (the feasible front, one dict per point
    with `trial` and the metrics). Raises `SelectionError` showing the closest points."""
    rule = parse_rule(rule) if isinstance(rule, str) else rule
    if not rows:
        raise SelectionError(f"pick = {rule.text!r}: the study has no feasible point")
    matching = [r for r in rows if r.get(rule.metric) is not None
                and all(_violation(r, c) == 0 for c in rule.conditions)]
    if not matching:
        closest = sorted(rows, key=lambda r: (sum(_violation(r, c) for c in rule.conditions), r["trial"]))[:3]
        shown = "; ".join(
            f"trial {r['trial']} (" + ", ".join(f"{name}={_fmt(r.get(name))}" for name, _, _ in rule.conditions) + ")"
            for r in closest
        )
        raise SelectionError(f"pick = {rule.text!r}: no point of the feasible front satisfies it; closest: {shown}")
    sign = 1 if rule.goal == "min" else -1
    return min(matching, key=lambda r: (sign * r[rule.metric], r["trial"]))["trial"]


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def knee(rows: list[dict[str, Any]], objectives: dict[str, str]) -> int:
    """The front's knee (see the module docstring); `objectives` maps name -> direction."""
    if not rows:
        raise SelectionError("knee: the study has no feasible point")
    scaled = {r["trial"]: 0.0 for r in rows}
    for name, direction in objectives.items():
        values = [r[name] for r in rows]
        low, high = min(values), max(values)
        if high == low:
            continue
        for row in rows:
            distance = (row[name] - low) / (high - low)
            if direction == "maximize":
                distance = 1.0 - distance
            scaled[row["trial"]] += distance ** 2
    return min(rows, key=lambda r: (scaled[r["trial"]], r["trial"]))["trial"]
