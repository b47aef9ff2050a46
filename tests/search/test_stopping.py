"""stop_when: a study whose front stops improving ends, and says so; one that improves goes on."""

from __future__ import annotations

import optuna

from slimtune.search.hypervolume import HYPERVOLUME_ATTR, hypervolume_settings, study_hypervolume
from slimtune.search.stopping import STOPPED_ATTR, StopWhenFrontStalls

OBJECTIVES = {"latency_ms": "minimize", "peak_memory_mb": "minimize", "accuracy": "maximize"}


def _study() -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    study.set_user_attr(HYPERVOLUME_ATTR, hypervolume_settings(OBJECTIVES, 0.02))
    study.enqueue_trial({}, user_attrs={"baseline": True})
    return study


def _objective(improving_until: int):
    """Latency falls by 5% a trial until `improving_until`, then only dominated points come."""

    def objective(trial: optuna.Trial) -> list[float]:
        if trial.number == 0:
            values = [8.0, 5.0, 0.98]
        elif trial.number <= improving_until:
            values = [8.0 * 0.95 ** trial.number, 5.0, 0.98]
        else:
            values = [9.0, 5.0, 0.97]
        trial.set_constraint("accuracy_drop", 0.98 - values[2] - 0.02)
        return values

    return objective


def test_a_stalled_front_stops_the_study_and_says_why() -> None:
    study, lines = _study(), []
    stop = StopWhenFrontStalls(gain_below=0.005, over_trials=5, log=lines.append).start(study)
    study.optimize(_objective(improving_until=6), n_trials=50, callbacks=[stop])
    # trials 1..6 improve; 7..11 do not; after trial 11 the last 5 trials gained nothing
    assert len(study.trials) == 12
    assert study.user_attrs[STOPPED_ATTR]["after_trial"] == 11
    [line] = lines
    assert line.startswith("after trial 11: stopped: the front stopped improving: hypervolume ")
    assert "(+0.00%) over the last 5 trials, below stop_when.hypervolume_gain_below = 0.5%" in line
    assert stop.history[-1] == study_hypervolume(study) > 0


def test_an_improving_front_runs_all_its_trials() -> None:
    study, lines = _study(), []
    stop = StopWhenFrontStalls(gain_below=0.005, over_trials=5, log=lines.append).start(study)
    study.optimize(_objective(improving_until=100), n_trials=20, callbacks=[stop])
    assert len(study.trials) == 20 and not lines and STOPPED_ATTR not in study.user_attrs


def test_failed_trials_count_toward_the_window() -> None:
    study, lines = _study(), []
    stop = StopWhenFrontStalls(gain_below=0.005, over_trials=3, log=lines.append).start(study)

    def objective(trial: optuna.Trial) -> list[float]:
        if trial.number > 1:
            raise RuntimeError("fails on this target")
        return _objective(improving_until=1)(trial)

    study.optimize(objective, n_trials=20, callbacks=[stop], catch=(RuntimeError,))
    assert len(study.trials) == 5  # 0, 1 complete; 2, 3, 4 failed: no gain over 3 trials
    assert lines and "after trial 4" in lines[0]


def test_a_resumed_study_runs_a_full_window_before_it_can_stop_again() -> None:
    study = _study()
    study.optimize(_objective(improving_until=6), n_trials=50,
                   callbacks=[StopWhenFrontStalls(0.005, 5, log=lambda _: None).start(study)])
    assert len(study.trials) == 12
    lines: list[str] = []
    study.optimize(_objective(improving_until=6), n_trials=50,
                   callbacks=[StopWhenFrontStalls(0.005, 5, log=lines.append).start(study)])
    assert len(study.trials) == 17 and "after trial 16" in lines[0]
