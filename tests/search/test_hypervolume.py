"""The hypervolume history from stored snapshots, checked against Optuna's public plot."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from slimtune.search.hypervolume import as_losses, hypervolume_history
from slimtune.storage import Repository, connect

from .conftest import Served


def test_a_single_point_and_the_reference_point() -> None:
    history = hypervolume_history([(0, [{"trial_number": 0, "values": [2.0, 0.9]}])], [False, True], [2.0, 0.9])
    # normalised: latency 1.0, accuracy -1.0; no range, so the reference is 0.1 beyond each
    assert history.reference_point == pytest.approx([1.1, -0.9])
    assert history.hypervolumes == pytest.approx([0.1 * 0.1])


def test_losses_divide_by_the_baseline_and_negate_what_is_maximised() -> None:
    assert as_losses(np.array([[4.0, 0.45]]), [False, True], [2.0, 0.9]).tolist() == [[2.0, -0.5]]


def test_matches_optunas_public_hypervolume_history(served_study: Served) -> None:
    """Same fronts, same reference point (in Optuna's units): the same volumes. Guards the
    private `optuna._hypervolume` import against an Optuna upgrade."""
    repository = Repository(connect(served_study.url))
    snapshots = repository.snapshot_fronts(served_study.name)
    assert snapshots == [(s.after_trial_number, s.front) for s in repository.snapshots(served_study.name)]
    study = optuna.load_study(study_name=served_study.name, storage=served_study.url)
    maximize = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    ours = hypervolume_history(snapshots, maximize, [1.0] * len(maximize))
    reference = [-r if m else r for r, m in zip(ours.reference_point, maximize)]
    figure = optuna.visualization.plot_hypervolume_history(study, reference_point=reference)
    public = dict(zip(figure.data[0].x, figure.data[0].y))
    assert len(ours.trial_numbers) >= 2
    for number, volume in zip(ours.trial_numbers, ours.hypervolumes):
        assert volume == pytest.approx(public[number], rel=1e-9), number
