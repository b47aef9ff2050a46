"""How much of the objective space a study's feasible front covers: its hypervolume, with every
objective normalised against the baseline and a reference point fixed when the study is created.

Normalisation (each objective becomes a loss, the baseline at 0 on every axis):
- a minimised objective v: ``log2(v / b)`` (b: the baseline's measured value), so -1 = half the
  baseline's latency and -3 = an eighth; reference ``log2(1.1)`` (up to 10% worse than the
  baseline still counts). Halvings, not ratios: compression gains compound, and on a linear
  ratio axis a 2x speed-up already covers half of what any speed-up can, so a front that goes
  from 4x to 13x hardly moved (benchmarks/results/search-efficiency/ has the figures);
- ``accuracy`` under ``max_accuracy_drop = d > 0``: ``(b - v) / d``, so the baseline is 0 and
  the constraint's floor ``b - d`` is 1, which is the reference: every feasible point counts,
  and the accuracy axis is measured in units of the allowed drop;
- any other maximised objective: ``-log2(v / b)``; reference ``log2(1.1)``.
Studies created before this rule keep theirs (``"scale": "baseline"``: linear ratios ``v / b``
with the baseline at 1, reference 1.1, accuracy floor at 2): the settings are read from the
study, never recomputed.
The baseline is the study's trial 0 (the unmodified model, enqueued at creation); until it has
completed there is no hypervolume. The rule and the reference are stored in the study's user
attribute `HYPERVOLUME_ATTR` when the study is created, so a later slimtune reads the same.

Which Optuna API: Optuna 5.0's only public hypervolume is
`optuna.visualization.plot_hypervolume_history` (a figure over raw values, infeasible trials
skipped). The computation behind it, `optuna._hypervolume.compute_hypervolume` (exact: a sweep
in 2-D, O(n^2) in 3-D, WFG above), is a private module; slimtune calls it from this one place,
and tests/search/test_hypervolume.py checks it against the public plot's numbers, so an
Optuna release that moves or changes it fails there first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume  # private: see the module docstring
from optuna.trial import FrozenTrial, TrialState

#: the Optuna study user attribute with the normalisation and reference point
HYPERVOLUME_ATTR = "slimtune_hypervolume"
#: how much worse than the baseline a point may be on an unconstrained axis and still count
MARGIN = 0.1


def hypervolume_settings(objectives: dict[str, str], max_accuracy_drop: float | None,
                         max_balanced_accuracy_drop: float | None = None) -> dict[str, Any]:
    """The per-study normalisation and reference point (JSON, stored at creation).
    `balanced_accuracy` under `max_balanced_accuracy_drop` is scaled as accuracy is under its drop."""
    axes = []
    drops = {"accuracy": max_accuracy_drop, "balanced_accuracy": max_balanced_accuracy_drop}
    for name, direction in objectives.items():
        if direction == "maximize" and drops.get(name):
            axes.append({"name": name, "direction": direction, "scale": float(drops[name]), "reference": 1.0})
        else:
            axes.append({"name": name, "direction": direction, "scale": "log2", "reference": math.log2(1.0 + MARGIN)})
    return {
        "rule": "halvings",
        "axes": axes,
        "normalise": "scale 'log2': log2(v / b) for minimised objectives, -log2(v / b) for maximised ones; "
                     "a number d: (v - b) / d for minimised, (b - v) / d for maximised; b is the baseline trial's "
                     "value. Older studies: scale 'baseline' means 1 + (v - b) / b (1 + (b - v) / b maximised) and "
                     "a number d means 1 + (v - b) / d (1 + (b - v) / d)",
    }


def linear_settings(objectives: dict[str, str], max_accuracy_drop: float | None) -> dict[str, Any]:
    """The first rule's settings (linear ratios, the baseline at 1; what studies created before
    the halvings rule stored): benchmarks report it beside the current rule."""
    axes = []
    for name, direction in objectives.items():
        if direction == "maximize" and name == "accuracy" and max_accuracy_drop:
            axes.append({"name": name, "direction": direction, "scale": float(max_accuracy_drop), "reference": 2.0})
        else:
            axes.append({"name": name, "direction": direction, "scale": "baseline", "reference": 1.0 + MARGIN})
    return {"axes": axes}


def reference_point(settings: dict[str, Any]) -> np.ndarray:
    return np.array([axis["reference"] for axis in settings["axes"]], dtype=float)


def _linear(settings: dict[str, Any]) -> bool:
    """Whether the study was created under the first rule (linear ratios, baseline at 1)."""
    return settings.get("rule") != "halvings"


def normalise(values: Sequence[Sequence[float]], baseline: Sequence[float], settings: dict[str, Any]) -> np.ndarray:
    """Objective values (one row per point, in the study's objective order) as losses to minimise."""
    points = np.asarray(values, dtype=float).reshape(-1, len(settings["axes"]))
    out = np.empty_like(points)
    offset = 1.0 if _linear(settings) else 0.0
    for i, (axis, b) in enumerate(zip(settings["axes"], baseline)):
        sign = 1.0 if axis["direction"] == "minimize" else -1.0
        if axis["scale"] == "log2":
            with np.errstate(divide="ignore", invalid="ignore"):
                out[:, i] = sign * np.log2(points[:, i] / b)
        else:
            scale = abs(b) if axis["scale"] == "baseline" else float(axis["scale"])
            out[:, i] = offset + sign * (points[:, i] - b) / scale
    return out


def hypervolume(values: Sequence[Sequence[float]], baseline: Sequence[float], settings: dict[str, Any]) -> float | None:
    """Hypervolume of `values` (feasible points) normalised against `baseline`; points beyond the
    reference on any axis add nothing. None when the baseline cannot normalise (a zero value)."""
    if any(b == 0 or not math.isfinite(b) for b, axis in zip(baseline, settings["axes"]) if isinstance(axis["scale"], str)):
        return None
    reference = reference_point(settings)
    if len(values) == 0:
        return 0.0
    points = normalise(values, baseline, settings)
    # beyond the reference on any axis adds nothing; a value of 0 or below on a log axis is
    # not a measurement (a minimised latency of 0 would be infinitely many halvings)
    points = points[np.all(np.isfinite(points), axis=1) & np.all(points <= reference, axis=1)]
    return float(compute_hypervolume(points, reference)) if len(points) else 0.0


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The completed baseline trial (enqueued with user attribute ``baseline``), if any."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get("baseline"):
            return trial
    return None


def study_hypervolume(study: optuna.Study, front: list[FrozenTrial] | None = None) -> float | None:
    """The hypervolume of the study's feasible front (Optuna's `best_trials`, which honours
    constraints) now; None for a study without settings or before its baseline completed."""
    settings = study.user_attrs.get(HYPERVOLUME_ATTR)
    if settings is None:
        return None
    baseline = baseline_trial(study)
    if baseline is None:
        return None
    front = study.best_trials if front is None else front
    return hypervolume([t.values for t in front], baseline.values, settings)


def _reference_ratio(axis: dict[str, Any]) -> float:
    """The value / baseline ratio at the reference point of an axis normalised to the baseline."""
    minimised = axis["direction"] == "minimize"
    if axis["scale"] == "log2":
        return 2 ** axis["reference"] if minimised else 2 ** -axis["reference"]
    return axis["reference"] if minimised else 2 - axis["reference"]


def describe_reference(settings: dict[str, Any]) -> str:
    return ", ".join(
        f"{axis['name']} {_reference_ratio(axis):g}x baseline" if isinstance(axis["scale"], str)
        else f"{axis['name']} at the max_{axis['name']}_drop floor"
        for axis in settings["axes"])


def hypervolume_line(study: optuna.Study) -> str:
    """One line for reports: the current hypervolume and what it is measured against."""
    settings = study.user_attrs.get(HYPERVOLUME_ATTR)
    if settings is None:
        return "hypervolume: not tracked (the study was created by a slimtune without hypervolume tracking)"
    value = study_hypervolume(study)
    if value is None:
        return "hypervolume: none yet (the baseline trial has not completed)"
    units = ("objectives normalised to the baseline = 1" if _linear(settings)
             else "halvings of each objective against the baseline, accuracy in units of the allowed drop")
    return f"hypervolume {value:.4f} ({units}; reference point: {describe_reference(settings)})"


@dataclass(frozen=True)
class HypervolumeHistory:
    """The front's hypervolume after each completed trial (the dashboard's "front history")."""

    trial_numbers: list[int]
    hypervolumes: list[float]
    reference_point: list[float]  # in normalised units


def hypervolume_history(
    snapshots: Sequence[tuple[int, list[dict[str, Any]]]], baseline: Sequence[float], settings: dict[str, Any],
) -> HypervolumeHistory:
    """From the stored Pareto snapshots ((after_trial_number, front) pairs in trial order), with
    the study's own normalisation and reference point: the same numbers `slimtune pareto` prints.
    Each distinct front is computed once (the front changes after few trials)."""
    known: dict[tuple[int, ...], float] = {}
    numbers, volumes = [], []
    for number, front in snapshots:
        key = tuple(sorted(point["trial_number"] for point in front))
        if key not in known:
            value = hypervolume([point["values"] for point in front], baseline, settings)
            known[key] = 0.0 if value is None else value
        numbers.append(number)
        volumes.append(known[key])
    return HypervolumeHistory(numbers, volumes, reference_point(settings).tolist())
