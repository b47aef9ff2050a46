"""Retries of lost trials, in one process: the retry gets its own constraint (Optuna's retry
callback would copy the dead run's), and a live trial wrongly judged lost keeps its result."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from slimtune.search.isolated import IsolatedEvaluator
from slimtune.search.config import WorkersSection, load_config
from slimtune.search.runner import run_study
from slimtune.search.many_workers import LostTrialHandler, retry_trial
from slimtune.storage import Repository, SlotBook, connect, optuna_storage

from .processes import check_study, study_file

pytestmark = pytest.mark.processes  # starts real slimtune processes: scheduled first (tests/conftest.py)


def dead_trial(study: optuna.Study, **system_attrs) -> optuna.trial.FrozenTrial:
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"baseline": True, "recipe": {"x": 0.5}, "status": "complete", "accuracy_drop": 0.3},
        system_attrs={"constraints:accuracy_drop": 0.25, **system_attrs},
    ))
    return study.trials[-1]


def test_a_retry_keeps_the_parameters_and_none_of_the_dead_runs_results() -> None:
    study = optuna.create_study(directions=["minimize", "maximize"])
    dead = dead_trial(study)
    # What Optuna's own callback does: the copy carries the dead run's constraint, and the
    # retry's own set_constraint is then ignored.
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)(study, dead)
    optuna_retry = study.trials[-1]
    assert optuna_retry.system_attrs["constraints:accuracy_drop"] == 0.25

    number = retry_trial(study, dead, max_retries=2)
    retry = study.trials[number]
    assert retry.state == TrialState.WAITING and retry.params == {"x": 0.5}
    assert retry.constraints == {}
    assert retry.user_attrs == {"baseline": True, "retry_of": dead.number}
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == dead.number
    trial = study.ask()  # the retry is what the next worker gets, and it sets its own constraint
    assert trial.number == optuna_retry.number and trial.params == {"x": 0.5}
    study.tell(trial, state=TrialState.FAIL)
    trial = study.ask()
    assert trial.number == number and trial.suggest_float("x", 0, 1) == 0.5
    trial.set_constraint("accuracy_drop", -0.01)
    study.tell(trial, [1.0, 2.0])
    assert study.trials[number].constraints == {"accuracy_drop": -0.01}


def test_retries_stop_after_max_retries() -> None:
    study = optuna.create_study(directions=["minimize"])
    dead = dead_trial(study, failed_trial=0, retry_history=[0, 3])
    assert retry_trial(study, dead, max_retries=2) is None
    assert retry_trial(study, dead, max_retries=3) is not None
    assert study.trials[-1].system_attrs["retry_history"] == [0, 3, dead.number]
    assert study.trials[-1].system_attrs["failed_trial"] == 0


def test_the_lost_trial_handler_releases_the_slot_and_records_why(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lost.db'}"
    engine = connect(url)
    repository, slots = Repository(engine), SlotBook(engine)
    repository.create_schema()
    study = optuna.create_study(study_name="s", storage=url, directions=["minimize"])
    slots.set_budget("s", 2)
    claim, _ = slots.claim("s", lambda n: (TrialState.RUNNING, None), 60)
    dead = dead_trial(study)
    slots.attach(claim, dead.number)
    messages: list[str] = []
    LostTrialHandler(repository, slots, WorkersSection(heartbeat_interval_s=1, grace_period_s=5), messages.append)(
        study, dead)
    assert [s.state for s in slots.slots("s")] == ["released"]
    record = repository.trial("s", dead.number)
    assert record.status == "lost"
    assert record.reason == "lost: no heartbeat for 5 s (its worker died or stalled); retried as trial 1"
    assert messages == [f"trial 0 {record.reason}"]
    engine.dispose()


def test_a_live_trial_judged_lost_keeps_its_measurement_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:

    """Trial 1's heartbeats stop (a database stall, a dead heartbeat thread) while it measures;
    another worker fails it as lost and retries it. When trial 1 finishes after all, its
    measurement is kept in slimtune's table and the run goes on to its three results."""
    path = study_file(tmp_path / "study.toml", "stalled", n_trials=3, finetune_steps=10,
                      workers={"heartbeat_interval_s": 1, "grace_period_s": 2})
    url = f"sqlite:///{tmp_path / 'stalled.db'}"
    config = load_config(path)
    real_evaluate, real_heartbeat = IsolatedEvaluator.evaluate, optuna.storages.RDBStorage.record_heartbeat
    silent = [False]

    def record_heartbeat(self, trial_id: int) -> None:
        if not silent[0]:
            real_heartbeat(self, trial_id)

    def evaluate(self, recipe, seed=0):
        measurement = real_evaluate(self, recipe, seed)
        if seed == config.study.seed + 1:  # trial 1: go silent, and let "another worker" look
            silent[0] = True
            time.sleep(config.workers.grace_period_s + 1.5)
            engine = connect(url)
            other = optuna.load_study(study_name="stalled", storage=optuna_storage(
                url, heartbeat_interval=1, grace_period=2,
                stale_trial_callback=LostTrialHandler(Repository(engine), SlotBook(engine), config.workers, print)))
            optuna.storages.fail_stale_trials(other)
            engine.dispose()
            silent[0] = False
        return measurement

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", record_heartbeat)
    monkeypatch.setattr(IsolatedEvaluator, "evaluate", evaluate)
    logged: list[str] = []
    run_study(config, url, progress=False, log=logged.append)

    study = check_study(url, "stalled", 3)
    assert study.trials[1].state == TrialState.FAIL
    engine = connect(url)
    record = Repository(engine).trial("stalled", 1)
    engine.dispose()
    assert record.status == "lost" and record.measurement is not None  # the result is kept
    assert "judged lost" in record.reason
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == study.trials[1].params
    assert any("finished after another worker had judged it lost" in line for line in logged)


def test_on_sqlite_a_trial_left_running_by_a_dead_process_is_failed_at_once(tmp_path: Path) -> None:
    """The next process on a SQLite file holds it alone, so a RUNNING trial there is a dead one:
    no need to wait for the grace period."""
    path = study_file(tmp_path / "study.toml", "crashed", n_trials=2, finetune_steps=10,
                      workers={"heartbeat_interval_s": 10, "grace_period_s": 600})
    url = f"sqlite:///{tmp_path / 'crashed.db'}"
    config = load_config(path)
    run_study(config, url, progress=False, log=lambda _: None, prepare_only=True)
    study = optuna.load_study(study_name="crashed", storage=url)
    crashed = study.ask()  # the baseline, popped and never told: what SIGKILL mid-trial leaves
    assert crashed.number == 0

    logged: list[str] = []
    started = time.monotonic()
    run_study(config, url, progress=False, log=logged.append)
    assert time.monotonic() - started < 120  # far below the 600 s grace period
    study = check_study(url, "crashed", 2)
    assert study.trials[0].state == TrialState.FAIL
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].user_attrs["baseline"] is True  # still the baseline
    engine = connect(url)
    record = Repository(engine).trial("crashed", 0)
    engine.dispose()
    assert record.status == "lost"
    assert record.reason == f"lost: its process ended while it ran (found by the next process on this SQLite file); " \
                            f"retried as trial {retry[0].number}"
    assert any(line.startswith("trial 0 lost: its process ended") for line in logged)
