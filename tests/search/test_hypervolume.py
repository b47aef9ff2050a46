"""Hypervolume normalised to the baseline: hand-computed cases, and agreement with Optuna's
public `plot_hypervolume_history` (slimtune computes with Optuna's private module), under the
current rule (halvings) and the first one (linear ratios), which older studies keep."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from slimtune.search.hypervolume import (
    HYPERVOLUME_ATTR, hypervolume, hypervolume_line, hypervolume_settings, linear_settings, normalise, reference_point,
    study_hypervolume,
)

OBJECTIVES = {"latency_ms": "minimize", "peak_memory_mb": "minimize", "accuracy": "maximize"}
BASELINE = [8.0, 5.0, 0.98]
#: what a study created under the first rule stored (linear ratios, the baseline at 1)
LINEAR_SETTINGS = {"axes": [
    {"name": "latency_ms", "direction": "minimize", "scale": "baseline", "reference": 1.1},
    {"name": "peak_memory_mb", "direction": "minimize", "scale": "baseline", "reference": 1.1},
    {"name": "accuracy", "direction": "maximize", "scale": 0.02, "reference": 2.0},
]}
LOG_1_1 = math.log2(1.1)


def test_halvings_the_baseline_is_0_on_every_axis_and_the_accuracy_floor_is_the_reference() -> None:
    settings = hypervolume_settings(OBJECTIVES, max_accuracy_drop=0.02)
    assert reference_point(settings).tolist() == pytest.approx([LOG_1_1, LOG_1_1, 1.0])
    assert normalise([BASELINE], BASELINE, settings).tolist() == [[0.0, 0.0, 0.0]]
    # half the latency, an eighth of the memory, at the floor (0.98 - 0.02); one point above the baseline
    assert normalise([[4.0, 0.625, 0.96], [8.0, 5.0, 0.99]], BASELINE, settings) == pytest.approx(
        np.array([[-1.0, -3.0, 1.0], [0.0, 0.0, -0.5]]))


def test_without_an_accuracy_constraint_every_axis_is_halvings_against_the_baseline() -> None:
    settings = hypervolume_settings(OBJECTIVES, max_accuracy_drop=None)
    assert reference_point(settings).tolist() == pytest.approx([LOG_1_1] * 3)
    assert normalise([[8.0, 5.0, 0.49]], BASELINE, settings) == pytest.approx(np.array([[0.0, 0.0, 1.0]]))


def test_hand_computed_volumes() -> None:
    settings = hypervolume_settings(OBJECTIVES, max_accuracy_drop=0.02)
    r = LOG_1_1
    # the baseline alone: r x r x 1
    assert hypervolume([BASELINE], BASELINE, settings) == pytest.approx(r * r)
    # half the latency, a quarter of the memory, at the baseline's accuracy: (1 + r)(2 + r) x 1
    a = [4.0, 1.25, 0.98]
    assert hypervolume([a, BASELINE], BASELINE, settings) == pytest.approx((1 + r) * (2 + r))
    # 8x faster counts three times the halving of 2x on that axis (a ratio axis would give 0.875 vs 0.5)
    assert hypervolume([[1.0, 5.0, 0.98]], BASELINE, settings) == pytest.approx((3 + r) * r)
    # two points that do not dominate each other: a, and (2x, 8x, half a drop more accurate)
    c = [4.0, 0.625, 0.97]  # (-1, -3, 0.5): adds (1 + r) x (3 - 2) x 0.5 beyond a
    assert hypervolume([a, c], BASELINE, settings) == pytest.approx((1 + r) * (2 + r) + (1 + r) * 1 * 0.5)
    # beyond the reference on one axis (twice the baseline's memory): adds nothing
    assert hypervolume([[1.0, 10.0, 0.98]], BASELINE, settings) == 0.0
    assert hypervolume([[0.0, 1.0, 0.98]], BASELINE, settings) == 0.0  # a zero latency is no measurement
    assert hypervolume([], BASELINE, settings) == 0.0
    assert hypervolume([BASELINE], [8.0, 0.0, 0.98], settings) is None  # a zero baseline cannot normalise


def test_a_study_created_under_the_linear_rule_keeps_it() -> None:
    assert linear_settings(OBJECTIVES, max_accuracy_drop=0.02) == LINEAR_SETTINGS
    assert reference_point(LINEAR_SETTINGS).tolist() == [1.1, 1.1, 2.0]
    assert normalise([BASELINE], BASELINE, LINEAR_SETTINGS).tolist() == [[1.0, 1.0, 1.0]]
    assert normalise([[4.0, 1.0, 0.96], [8.0, 5.0, 0.99]], BASELINE, LINEAR_SETTINGS) == pytest.approx(
        np.array([[0.5, 0.2, 2.0], [1.0, 1.0, 0.5]]))
    assert hypervolume([BASELINE], BASELINE, LINEAR_SETTINGS) == pytest.approx(0.01)
    assert hypervolume([[4.0, 1.0, 0.98], BASELINE], BASELINE, LINEAR_SETTINGS) == pytest.approx(0.54)


def _study(values: list[list[float]], drops: list[float], max_drop: float, settings: dict | None = None) -> optuna.Study:
    """A study told `values`; trial 0 is the baseline; `drops` become the accuracy constraint."""
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    study.set_user_attr(HYPERVOLUME_ATTR, settings or hypervolume_settings(OBJECTIVES, max_drop))
    for number, (value, drop) in enumerate(zip(values, drops)):
        trial = study.ask()
        if number == 0:
            trial.set_user_attr("baseline", True)
        trial.set_constraint("accuracy_drop", drop - max_drop)
        study.tell(trial, value)
    return study


def _random_trials(max_drop: float) -> tuple[list[list[float]], list[float]]:
    rng = np.random.default_rng(0)
    values, drops = [BASELINE], [0.0]
    for _ in range(40):
        latency, memory, accuracy = rng.uniform(1, 10), rng.uniform(0.5, 6), rng.uniform(0.93, 0.995)
        values.append([latency, memory, accuracy])
        drops.append(BASELINE[2] - accuracy)
    return values, drops


def test_the_same_number_as_optunas_public_hypervolume_history() -> None:
    """plot_hypervolume_history works on the values a study holds: told each objective's
    halvings (log2 of the ratio to the baseline) and the raw accuracy, with the reference at
    1.1x the baseline and the accuracy floor, its volume is ours times the allowed drop."""
    max_drop = 0.02
    values, drops = _random_trials(max_drop)
    study = _study(values, drops, max_drop)
    assert any(d > max_drop for d in drops) and len(study.best_trials) > 3  # infeasible ones exist and are left out

    halvings = [[math.log2(v[0] / BASELINE[0]), math.log2(v[1] / BASELINE[1]), v[2]] for v in values]
    public_study = _study(halvings, drops, max_drop)
    public = optuna.visualization.plot_hypervolume_history(
        public_study, [LOG_1_1, LOG_1_1, BASELINE[2] - max_drop]).data[0].y[-1]
    ours = study_hypervolume(study)
    assert ours == pytest.approx(public / max_drop, rel=1e-9)
    assert ours > 1.0
    assert hypervolume_line(study).startswith(f"hypervolume {ours:.4f} (halvings of each objective")


def test_the_linear_rule_against_optunas_public_hypervolume_history() -> None:
    """Under the first rule normalising divides each axis by its scale (baseline latency,
    baseline memory, max drop), so the raw volume differs by their product."""
    max_drop = 0.02
    values, drops = _random_trials(max_drop)
    study = _study(values, drops, max_drop, LINEAR_SETTINGS)
    raw_reference = [1.1 * BASELINE[0], 1.1 * BASELINE[1], BASELINE[2] - max_drop]
    public = optuna.visualization.plot_hypervolume_history(study, raw_reference).data[0].y[-1]
    ours = study_hypervolume(study)
    assert ours == pytest.approx(public / (BASELINE[0] * BASELINE[1] * max_drop), rel=1e-9)
    assert hypervolume_line(study).startswith(f"hypervolume {ours:.4f} (objectives normalised to the baseline = 1")


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
    r = LOG_1_1
    assert history.hypervolumes == pytest.approx([r * r, (1 + r) * (math.log2(5) + r)])
    assert history.reference_point == pytest.approx([r, r, 1.0])
