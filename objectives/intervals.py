"""Paired intervals of an accuracy drop: the baseline and a candidate scored on the same examples.

A drop measured on n held-out examples is a difference of two proportions taken on the *same*
examples, so its uncertainty comes from the examples on which the two models disagree, not
from each model's own binomial error (which would overstate it: most examples are right, or
wrong, for both). Each example gives d_i = correct_baseline_i - correct_candidate_i in
{-1, 0, +1}:

- top-1: the drop is mean(d); its interval is mean(d) +- z * sd(d) / sqrt(n) (the paired
  normal interval; sd with n - 1). With no disagreement at all it is [0, 0]: the two models
  made the same calls on every example.
- balanced accuracy: the drop is the mean over classes of each class's mean(d); its interval is
  a stratified bootstrap (resample the examples of each true class with replacement, the same
  draw for both models), percentile, seeded so a figure is reproducible.

Drops and bounds are fractions (0.01 = one point); positive = the candidate is worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

#: bootstrap resamples of the balanced accuracy's interval, and their seed
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
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


def _paired(baseline: Outcomes, candidate: Outcomes) -> torch.Tensor:
    if not torch.equal(baseline.labels, candidate.labels):
        raise ValueError("paired intervals need both models scored on the same examples, in the same order")
    return baseline.correct.double() - candidate.correct.double()


def accuracy_drop_interval(baseline: Outcomes, candidate: Outcomes, level: float = DEFAULT_LEVEL
                           ) -> tuple[float, float, float]:
    """(drop, low, high) of top-1 accuracy, paired normal interval."""
    d = _paired(baseline, candidate)
    n = len(d)
    drop = float(d.mean())
    if n < 2:
        return drop, -1.0, 1.0
    half = z_value(level) * float(d.std(unbiased=True)) / math.sqrt(n)
    return drop, drop - half, drop + half


def balanced_drop(labels: torch.Tensor, d: torch.Tensor) -> float:
    classes = torch.unique(labels)
    return float(torch.stack([d[labels == c].mean() for c in classes]).mean())


def balanced_accuracy_drop_interval(baseline: Outcomes, candidate: Outcomes, level: float = DEFAULT_LEVEL, *,
                                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
                                    ) -> tuple[float, float, float]:
    """(drop, low, high) of balanced accuracy: stratified bootstrap over the examples of each
    true class, percentile interval, seeded."""
    d = _paired(baseline, candidate)
    labels = baseline.labels
    drop = balanced_drop(labels, d)
    generator = torch.Generator().manual_seed(seed)
    per_class = []
    for c in torch.unique(labels):
        members = d[labels == c]
        draws = torch.randint(0, len(members), (resamples, len(members)), generator=generator)
        per_class.append(members[draws].mean(dim=1))
    replicates = torch.stack(per_class).mean(dim=0)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(replicates, torch.tensor([tail, 1.0 - tail], dtype=replicates.dtype)).tolist()
    return drop, low, high


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
