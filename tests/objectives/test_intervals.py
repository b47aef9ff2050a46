"""Paired intervals of the accuracy drop (objectives/intervals.py), checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from slimtune.objectives.intervals import (
    Outcomes, accuracy_drop_interval, balanced_accuracy_drop_interval, drop_intervals, needed_examples, newcombe_drop,
    paired_table, typical_width,
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
    assert paired_table(baseline.correct, candidate.correct) == (6, 3, 1, 0)
    # Newcombe's method 10 by hand, z = 1.959964: Wilson 9/10 = (0.595850, 0.982122), 7/10 =
    # (0.396776, 0.892210); phi = (6*0 - 3*1) / sqrt(9*1*7*3) = -0.218218;
    # delta = sqrt(0.304150^2 + 2*0.218218*0.304150*0.192210 + 0.192210^2) = 0.393659,
    # epsilon = sqrt(0.082122^2 + 2*0.218218*0.082122*0.303224 + 0.303224^2) = 0.330994
    drop, low, high = accuracy_drop_interval(baseline, candidate)
    assert drop == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.2 - 0.393659, 0.2 + 0.330994), abs=1e-5)
    # a lower level is a narrower interval around the same drop
    narrower = accuracy_drop_interval(baseline, candidate, 0.90)
    assert narrower[0] == drop and low < narrower[1] < drop < narrower[2] < high


def test_no_disagreement_is_not_certainty_and_unpaired_examples_are_refused() -> None:
    """Two models that agree on every one of 216 examples may still differ on a few percent of
    others: the interval keeps a width of about 3/n either side (the paired normal interval
    said [0, 0], and on the digits demo 4 of 5 test drops outside their validation intervals
    were such points: docs/results/accuracy.md)."""
    labels = [0, 1] * 108
    same = _outcomes(labels, [True] * 214 + [False] * 2)
    drop, low, high = accuracy_drop_interval(same, same)
    assert drop == 0.0 and low == pytest.approx(-high) and 0.01 < high < 0.025
    b_drop, b_low, b_high = balanced_accuracy_drop_interval(same, same)
    assert b_drop == 0.0 and b_low < -0.01 and b_high > 0.01
    with pytest.raises(ValueError, match="same examples"):
        accuracy_drop_interval(same, _outcomes([1] * 216, [True] * 216))


def test_the_interval_covers_the_true_drop_at_least_about_95_percent_of_the_time() -> None:
    """Simulated pairs of models with a known drop, 300 examples each, a few percent flipped
    either way (the shape of a compressed model against its baseline): the 95% interval holds
    the true drop in at least 93% of 2,000 draws, also when flips are rare (there the paired
    normal interval it replaced held it in 75%; Newcombe's is conservative: 99.95%)."""
    generator = torch.Generator().manual_seed(0)
    for lose, win in ((0.03, 0.01), (0.005, 0.0)):  # the chance of losing / winning an example
        covered, draws = 0, 2000
        for _ in range(draws):
            right = torch.rand(300, generator=generator) < 0.9
            u = torch.rand(300, generator=generator)
            candidate = torch.where(right, u >= lose, u < win)
            drop, low, high = newcombe_drop(*paired_table(right, candidate))
            true = 0.9 * lose - 0.1 * win
            covered += low <= true <= high
        assert covered / draws >= 0.93, (lose, win, covered / draws)  # measured: 0.96 and 0.9995


def test_balanced_interval_on_an_imbalanced_toy_set_combines_the_classes() -> None:
    # 90 examples of class 0 (both models right on all) and 10 of class 1 (baseline 8 right, candidate 5)
    labels = [0] * 90 + [1] * 10
    baseline = _outcomes(labels, [True] * 90 + [True] * 8 + [False] * 2)
    candidate = _outcomes(labels, [True] * 90 + [True] * 5 + [False] * 5)
    drop, low, high = balanced_accuracy_drop_interval(baseline, candidate)
    assert drop == pytest.approx((0.0 + 0.3) / 2)  # balanced: the mean of the per-class drops
    # MOVER: each class's Newcombe interval, half-widths in quadrature on each side, halved (two classes)
    parts = [newcombe_drop(90, 0, 0, 0), newcombe_drop(5, 3, 0, 2)]
    assert low == pytest.approx(drop - math.hypot(*(p[0] - p[1] for p in parts)) / 2)
    assert high == pytest.approx(drop + math.hypot(*(p[2] - p[0] for p in parts)) / 2)
    assert low < drop < high and low > -0.1
    # top-1 on the same examples says a 3-point drop, far narrower: class 1's ten examples decide
    top_drop, top_low, top_high = accuracy_drop_interval(baseline, candidate)
    assert top_drop == pytest.approx(0.03) and top_high - top_low < high - low
    stored = drop_intervals(baseline, candidate)
    assert stored["examples"] == 100 and stored["discordant"] == 3 and stored["ci_level"] == 0.95


def test_the_size_a_constraint_needs() -> None:
    # a 97% baseline, a 1-point constraint: width 2 * 1.96 * sqrt(0.03 / n) <= 0.01 needs n >= 4,610
    assert needed_examples(0.03, 0.01) == math.ceil((2 * 1.959964) ** 2 * 0.03 / 0.01 ** 2)
    assert typical_width(0.03, needed_examples(0.03, 0.01), 0.01) <= 0.01
    assert typical_width(0.03, 216, 0.01) > 0.04
