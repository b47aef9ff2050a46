"""Paired intervals of an accuracy drop: the baseline and a candidate scored on the same examples.

A drop measured on n held-out examples is a difference of two proportions taken on the *same*
examples, so its uncertainty comes from the examples on which the two models disagree, not
from each model's own binomial error (which would overstate it: most examples are right, or
wrong, for both). The examples fall into a paired table: a (both right), b (only the baseline
right), c (only the candidate right), d (both wrong); the drop is (b - c) / n.

- top-1: Newcombe's hybrid score interval for a difference of paired proportions (Newcombe
  1998, method 10): each model's Wilson score interval, combined with the table's correlation.
  It replaced the paired normal interval, mean(d) +- z sd(d) / sqrt(n), which is [0, 0] when the
  two models disagree on no example: on the digits demo's 216 validation digits a fifth of the
  front points had no discordant example, and their zero-width intervals missed 4 of 5 test drops
  that fell outside (docs/results/accuracy.md). Zero discordant examples out of n still leave a
  flip rate of up to about 3 / n plausible; the score interval says so.
- balanced accuracy: the drop is the mean over classes of each class's drop; its interval
  combines the classes' Newcombe intervals by MOVER (Zou and Donner 2008: the half-widths of
  independent parts add in quadrature, on each side separately). The classes are independent
  samples, so nothing is resampled and a figure is exactly reproducible.

Drops and bounds are fractions (0.01 = one point); positive = the candidate is worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

#: the interval shown when the study asks for no other
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Outcomes:
    """One model's answers on one split, example by example (in the split's order)."""

    labels: torch.Tensor
    predictions: torch.Tensor

    @property
    def correct(self) -> torch.Tensor:
        return self.labels == self.predictions

    def __len__(self) -> int:
        return len(self.labels)


def z_value(level: float) -> float:
    """The two-sided normal quantile of `level` (1.96 for 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level = {level}: must be between 0 and 1")
    return NormalDist().inv_cdf(0.5 + level / 2)


def _check_paired(baseline: Outcomes, candidate: Outcomes) -> None:
    if not torch.equal(baseline.labels, candidate.labels):
        raise ValueError("paired intervals need both models scored on the same examples, in the same order")


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_table(baseline: torch.Tensor, candidate: torch.Tensor) -> tuple[int, int, int, int]:
    """(a, b, c, d) of two boolean correctness vectors: both right, only the baseline right,
    only the candidate right, both wrong."""
    return (int((baseline & candidate).sum()), int((baseline & ~candidate).sum()),
            int((~baseline & candidate).sum()), int((~baseline & ~candidate).sum()))


def newcombe_drop(a: int, b: int, c: int, d: int, level: float = DEFAULT_LEVEL) -> tuple[float, float, float]:
    """(drop, low, high) of p_baseline - p_candidate from a paired table, Newcombe's method 10."""
    n = a + b + c + d
    if n == 0:
        return 0.0, -1.0, 1.0
    z = z_value(level)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins > 0 else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    drop = p1 - p2
    return drop, drop - delta, drop + epsilon


def accuracy_drop_interval(baseline: Outcomes, candidate: Outcomes, level: float = DEFAULT_LEVEL
                           ) -> tuple[float, float, float]:
    """(drop, low, high) of top-1 accuracy: Newcombe's paired score interval."""
    _check_paired(baseline, candidate)
    return newcombe_drop(*paired_table(baseline.correct, candidate.correct), level)


def balanced_accuracy_drop_interval(baseline: Outcomes, candidate: Outcomes, level: float = DEFAULT_LEVEL
                                    ) -> tuple[float, float, float]:
    """(drop, low, high) of balanced accuracy: each true class's Newcombe interval, combined by
    MOVER for their mean."""
    _check_paired(baseline, candidate)
    labels = baseline.labels
    parts = [newcombe_drop(*paired_table(baseline.correct[labels == c], candidate.correct[labels == c]), level)
             for c in torch.unique(labels)]
    k = len(parts)
    drop = sum(p[0] for p in parts) / k
    below = math.sqrt(sum((p[0] - p[1]) ** 2 for p in parts)) / k
    above = math.sqrt(sum((p[2] - p[0]) ** 2 for p in parts)) / k
    return drop, drop - below, drop + above


def drop_intervals(baseline: Outcomes, candidate: Outcomes, level: float = DEFAULT_LEVEL) -> dict[str, object]:
    """What a measurement stores: both drops with their intervals at `level`, and the split size."""
    drop, low, high = accuracy_drop_interval(baseline, candidate, level)
    b_drop, b_low, b_high = balanced_accuracy_drop_interval(baseline, candidate, level)
    return {"accuracy_drop": drop, "accuracy_drop_ci": [low, high],
            "balanced_accuracy_drop": b_drop, "balanced_accuracy_drop_ci": [b_low, b_high],
            "ci_level": level, "examples": len(baseline),
            "discordant": int((baseline.correct != candidate.correct).sum())}


def needed_examples(error_rate: float, max_drop: float, level: float = DEFAULT_LEVEL) -> int:
    """How many examples a split needs before a typical candidate's interval of the drop is no
    wider than `max_drop`: a candidate that disagrees with the baseline on a share of examples
    about the baseline's error rate (the usual size of a compressed model's flips) has a paired
    interval of width 2 z sqrt(q / n)."""
    q = max(error_rate, max_drop, 1e-4)
    return math.ceil((2 * z_value(level)) ** 2 * q / max_drop ** 2)


def typical_width(error_rate: float, examples: int, max_drop: float, level: float = DEFAULT_LEVEL) -> float:
    """The width of that typical candidate's interval on `examples` examples."""
    q = max(error_rate, max_drop, 1e-4)
    return 2 * z_value(level) * math.sqrt(q / max(examples, 1))
