"""Paired intervals of the accuracy drop (objectives/intervals.py), checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from slimtune.objectives.intervals import (
    Outcomes, accuracy_drop_interval, balanced_accuracy_drop_interval, drop_intervals, needed_examples, typical_width,
)


def _outcomes(labels: list[int], correct: list[bool]) -> Outcomes:
    labels_t = torch.tensor(labels)
    predictions = torch.where(torch.tensor(correct), labels_t, 1 - labels_t)  # binary: wrong = the other class
    return Outcomes(labels_t, predictions)


def test_top1_interval_of_a_known_paired_case_matches_the_hand_computation() -> None:
    # ten examples: the candidate loses examples 0-2, wins example 9 (the baseline's only miss)
    labels = [0, 1] * 5
    baseline = _outcomes(labels, [True] * 9 + [False])
    candidate = _outcomes(labels, [False] * 3 + [True] * 7)
    # d = [1, 1, 1, 0, 0, 0, 0, 0, 0, -1]: mean 0.2; sum of squared deviations 3(0.8^2) + 1.2^2 + 6(0.2^2) = 3.6;
    # variance 3.6 / 9 = 0.4; standard error sqrt(0.4 / 10) = 0.2; z(0.95) = 1.959964
    drop, low, high = accuracy_drop_interval(baseline, candidate)
    assert drop == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.2 - 1.959964 * 0.2, 0.2 + 1.959964 * 0.2), abs=1e-6)
    # 90%: z = 1.644854
    assert accuracy_drop_interval(baseline, candidate, 0.90)[2] == pytest.approx(0.2 + 1.644854 * 0.2, abs=1e-6)


def test_identical_answers_give_a_zero_interval_and_unpaired_examples_are_refused() -> None:
    same = _outcomes([0, 1, 1, 0], [True, False, True, True])
    assert accuracy_drop_interval(same, same) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same examples"):
        accuracy_drop_interval(same, _outcomes([1, 1, 1, 0], [True] * 4))


def test_balanced_interval_on_an_imbalanced_toy_set_is_the_stratified_bootstrap() -> None:
    # 90 examples of class 0 (both models right on all) and 10 of class 1 (baseline 8 right, candidate 5)
    labels = [0] * 90 + [1] * 10
    baseline = _outcomes(labels, [True] * 90 + [True] * 8 + [False] * 2)
    candidate = _outcomes(labels, [True] * 90 + [True] * 5 + [False] * 5)
    drop, low, high = balanced_accuracy_drop_interval(baseline, candidate)
    assert drop == pytest.approx((0.0 + 0.3) / 2)  # balanced: the mean of the per-class drops
    # class 0 never varies; class 1's d has three 1s in ten, so each resample's balanced drop is
    # k / 20 with k ~ Binomial(10, 0.3): its 2.5% and 97.5% points are k = 0 or 1 and k = 6
    assert low in (pytest.approx(0.0), pytest.approx(0.05))
    assert high == pytest.approx(0.30)
    assert low <= drop <= high
    # seeded: the same figures again; top-1 on the same examples says a 3-point drop, far narrower
    assert balanced_accuracy_drop_interval(baseline, candidate) == (drop, low, high)
    top_drop, top_low, top_high = accuracy_drop_interval(baseline, candidate)
    assert top_drop == pytest.approx(0.03) and top_high - top_low < high - low
    stored = drop_intervals(baseline, candidate)
    assert stored["examples"] == 100 and stored["discordant"] == 3 and stored["ci_level"] == 0.95


def test_the_size_a_constraint_needs() -> None:
    # a 97% baseline, a 1-point constraint: width 2 * 1.96 * sqrt(0.03 / n) <= 0.01 needs n >= 4,610
    assert needed_examples(0.03, 0.01) == math.ceil((2 * 1.959964) ** 2 * 0.03 / 0.01 ** 2)
    assert typical_width(0.03, needed_examples(0.03, 0.01), 0.01) <= 0.01
    assert typical_width(0.03, 216, 0.01) > 0.04
