"""The hypervolume of the feasible front after each completed trial, from the stored Pareto
snapshots: how much the front still moves.

Optuna's public API draws this (`optuna.visualization.plot_hypervolume_history`) but must load
every trial and returns only a figure; the computation itself is `optuna._hypervolume
.compute_hypervolume`, a private module. slimtune already stores the front after every trial,
so it calls that function on the snapshots, imported here alone; a test checks the result
against the public plot so an Optuna upgrade that changes it is caught.

Units: each objective is divided by the baseline's value (unitless, comparable across
objectives) and turned into a loss (maximised objectives negated). The reference point is the
worst value any stored front reached in each objective, plus a tenth of that objective's range
(a tenth of the baseline's value when the range is zero), so every front point adds volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from optuna._hypervolume import compute_hypervolume


@dataclass(frozen=True)
class HypervolumeHistory:
    trial_numbers: list[int]
    hypervolumes: list[float]
    reference_point: list[float]  # in normalised loss units


def as_losses(values: np.ndarray, maximize: Sequence[bool], baseline: Sequence[float]) -> np.ndarray:
    """Objective values divided by the baseline's, maximised ones negated: smaller is better."""
    scale = np.where(np.asarray(baseline, dtype=float) == 0, 1.0, np.abs(np.asarray(baseline, dtype=float)))
    sign = np.where(np.asarray(maximize), -1.0, 1.0)
    return sign * np.asarray(values, dtype=float) / scale


def hypervolume_history(
    snapshots: Sequence[tuple[int, list[dict[str, Any]]]], maximize: Sequence[bool], baseline: Sequence[float]
) -> HypervolumeHistory:
    """`snapshots`: (after_trial_number, front) pairs in trial order, each front a list of
    {"trial_number", "values"} as `Repository.record_snapshot` stores them."""
    fronts = [as_losses(np.array([p["values"] for p in front], dtype=float).reshape(-1, len(maximize)), maximize, baseline)
              for _, front in snapshots]
    every = np.concatenate([f for f in fronts if len(f)] or [np.zeros((0, len(maximize)))])
    if not len(every):
        return HypervolumeHistory([], [], [])
    worst, best = every.max(axis=0), every.min(axis=0)
    span = worst - best
    reference = worst + np.where(span > 0, 0.1 * span, 0.1)
    # the front changes after few trials: compute each distinct front once
    known: dict[tuple[int, ...], float] = {}
    volumes = []
    for (_, front), losses in zip(snapshots, fronts):
        key = tuple(sorted(p["trial_number"] for p in front))
        if key not in known:
            known[key] = float(compute_hypervolume(losses, reference)) if len(losses) else 0.0
        volumes.append(known[key])
    return HypervolumeHistory([number for number, _ in snapshots], volumes, reference.tolist())
