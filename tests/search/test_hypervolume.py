"""Hypervolume normalised to the baseline: hand-computed cases, and agreement with Optuna's
public `plot_hypervolume_history` (slimtune computes with Optuna's private module)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from slimtune.search.hypervolume import (
    HYPERVOLUME_ATTR, hypervolume, hypervolume_line, hypervolume_settings, normalise, reference_point, study_hypervolume,
)

OBJECTIVES = {"latency_ms": "minimize", "peak_memory_mb": "minimize", "accuracy": "maximize"}
BASELINE = [8.0, 5.0, 0.98]


def test_the_baseline_is_1_on_every_axis_and_the_accuracy_floor_is_the_reference() -> None:
    settings = hypervolume_settings(OBJECTIVES, max_accuracy_drop=0.02)
    assert list(reference_point(settings)) == [1.1, 1.1, 2.0]
    assert normalise([BASELINE], BASELINE, settings).tolist() == [[1.0, 1.0, 1.0]]
    # half the latency, a fifth of the memory, at the floor (0.98 - 0.02) and one point above the baseline
    assert normalise([[4.0, 1.0, 0.96], [8.0, 5.0, 0.99]], BASELINE, settings) == pytest.approx(
        np.array([[0.5, 0.2, 2.0], [1.0, 1.0, 0.5]]))


def test_without_an_accuracy_constraint_every_axis_is_relative_to_the_baseline() -> None:
    settings = hypervolume_settings(OBJECTIVES, max_accuracy_drop=None)
    assert list(reference_point(settings)) == [1.1, 1.1, 1.1]
    assert normalise([[8.0, 5.0, 0.49]], BASELINE, settings) == pytest.approx(np.array([[1.0, 1.0, 1.5]]))


def test_hand_computed_volumes() -> None:
    settings = hypervolume_settings(OBJECTIVES, max_accuracy_drop=0.02)
    # the baseline alone: 0.1 x 0.1 x 1.0
    assert hypervolume([BASELINE], BASELINE, settings) == pytest.approx(0.01)
    # one point at (0.5, 0.2, 1.0): 0.6 x 0.9 x 1.0; with the baseline inside it, nothing more
    assert hypervolume([[4.0, 1.0, 0.98], BASELINE], BASELINE, settings) == pytest.approx(0.54)
    # two points that do not dominate each other: 0.6*0.9*1.0 + 0.6*0.9*0.5 - overlap 0.6*0.9*0.5
    a, b = [4.0, 1.0, 0.98], [4.0, 1.0, 0.97]
    assert hypervolume([a, b], BASELINE, settings) == pytest.approx(0.54)
    c = [2.0, 4.0, 0.97]  # (0.25, 0.8, 1.5): 0.85 x 0.3 x 0.5 = 0.1275, overlap with a: 0.6 x 0.3 x 0.5
    assert hypervolume([a, c], BASELINE, settings) == pytest.approx(0.54 + 0.1275 - 0.09)
    # beyond the reference on one axis (twice the baseline's memory): adds nothing
    assert hypervolume([[1.0, 10.0, 0.98]], BASELINE, settings) == 0.0
    assert hypervolume([], BASELINE, settings) == 0.0
    assert hypervolume([BASELINE], [8.0, 0.0, 0.98], settings) is None  # a zero baseline cannot normalise


def _study(values: list[list[float]], drops: list[float], max_drop: float) -> optuna.Study:
    """A study told `values`; trial 0 is the baseline; `drops` become the accuracy constraint."""
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    study.set_user_attr(HYPERVOLUME_ATTR, hypervolume_settings(OBJECTIVES, max_drop))
    for number, (value, drop) in enumerate(zip(values, drops)):
        trial = study.ask()
        if number == 0:
            trial.set_user_attr("baseline", True)
        trial.set_constraint("accuracy_drop", drop - max_drop)
        study.tell(trial, value)
    return study


def test_the_same_number_as_optunas_public_hypervolume_history() -> None:
    """plot_hypervolume_history works on raw values; normalising divides each axis by its scale
    (baseline latency, baseline memory, max drop), so the volumes differ by their product."""
    rng = np.random.default_rng(0)
    max_drop = 0.02
    values, drops = [BASELINE], [0.0]
    for _ in range(40):
        latency, memory, accuracy = rng.uniform(1, 10), rng.uniform(0.5, 6), rng.uniform(0.93, 0.995)
        values.append([latency, memory, accuracy])
        drops.append(BASELINE[2] - accuracy)
    study = _study(values, drops, max_drop)
    assert any(d > max_drop for d in drops) and len(study.best_trials) > 3  # infeasible ones exist and are left out

    raw_reference = [1.1 * BASELINE[0], 1.1 * BASELINE[1], BASELINE[2] - max_drop]
    public = optuna.visualization.plot_hypervolume_history(study, raw_reference).data[0].y[-1]
    ours = study_hypervolume(study)
    assert ours == pytest.approx(public / (BASELINE[0] * BASELINE[1] * max_drop), rel=1e-9)
    assert ours > 0.01
    assert hypervolume_line(study).startswith(f"hypervolume {ours:.4f} (objectives normalised to the baseline")


def test_no_hypervolume_before_the_baseline_or_without_settings() -> None:
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    assert study_hypervolume(study) is None
    assert "not tracked" in hypervolume_line(study)
    study.set_user_attr(HYPERVOLUME_ATTR, hypervolume_settings(OBJECTIVES, 0.01))
    study.add_trial(optuna.trial.create_trial(values=[4.0, 1.0, 0.98]))  # not the baseline
    assert study_hypervolume(study) is None
    assert "none yet" in hypervolume_line(study)


def test_the_dashboards_history_uses_the_studys_own_settings() -> None:
    from slimtune.search.hypervolume import hypervolume_history

    settings = hypervolume_settings(OBJECTIVES, max_accuracy_drop=0.02)
    snapshots = [(0, [{"trial_number": 0, "values": BASELINE}]),
                 (1, [{"trial_number": 0, "values": BASELINE}, {"trial_number": 1, "values": [4.0, 1.0, 0.98]}])]
    history = hypervolume_history(snapshots, BASELINE, settings)
    assert history.trial_numbers == [0, 1]
    assert history.hypervolumes == pytest.approx([0.01, 0.54])  # as in test_hand_computed_volumes
    assert history.reference_point == [1.1, 1.1, 2.0]
