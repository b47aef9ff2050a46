"""Many workers on one PostgreSQL database, as real processes: exactly N trials, no recipe run
twice, a killed worker's trial failed and retried (even when it was the last worker), SIGTERM
on `launch`, and two studies at once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.trial import TrialState

from slimtune.storage import Repository, SlotBook, connect

from tests.storage.postgres import temporary_database
from tests.search.processes import Database, check_study, finish, running_trial, same_recipe, start, study_file

pytestmark = pytest.mark.processes  # starts real slimtune processes: scheduled first (tests/conftest.py)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with temporary_database() as url:
        yield url


def lost_and_retried(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The killed trial is FAIL `lost`, and its retry ran with the same parameters and a
    constraint of its own."""
    killed = study.trials[number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == number]
    assert len(retries) == 1, [t.user_attrs for t in study.trials]
    retry = retries[0]
    assert same_recipe(killed, retry)
    assert retry.system_attrs["failed_trial"] == number
    if retry.state == TrialState.COMPLETE:
        accuracy_drop = retry.user_attrs["accuracy_drop"]
        assert retry.constraints == {"accuracy_drop": pytest.approx(accuracy_drop - 0.05)}
    return retry


def test_four_workers_finish_exactly_n_trials_even_when_one_is_killed_mid_trial(
    tmp_path: Path, postgres_url: str,
) -> None:
    """Optuna alone overshoots by up to workers - 1; a killed worker's trial would stay RUNNING."""
    path = study_file(tmp_path / "four.toml", "four", n_trials=6, finetune_steps=100)
    db = Database(postgres_url)
    launcher = start("launch", str(path), "--storage", postgres_url, "--workers", "4", cwd=tmp_path)
    number = running_trial(db, "four", [launcher], after=1)
    pid = db.slot_owner("four", number)
    time.sleep(0.5)  # into the measurement (fine-tuning takes seconds)
    os.kill(pid, signal.SIGKILL)
    code, out, err = finish(launcher)
    assert code == 0, err + out  # the other workers finished the study
    assert "killed by SIGKILL" in out and "Pareto front of 'four'" in out
    for index in range(4):
        assert f"[worker {index}] started" in out
    study = check_study(postgres_url, "four", 6)
    assert len(study.trials) == 7  # the six results and the killed trial, nothing more
    lost_and_retried(study, number)
    engine = connect(postgres_url)
    record = Repository(engine).trial("four", number)
    workers = {slot.worker for slot in SlotBook(engine).slots("four")}
    engine.dispose()
    assert record.status == "lost" and "no heartbeat for 3 s" in record.reason and "retried as trial" in record.reason
    assert len(workers) >= 2, workers  # the killed one and at least one other took part
    db.dispose()


def test_when_the_last_worker_dies_a_new_worker_fails_its_trial_and_retries_it(
    tmp_path: Path, postgres_url: str,
) -> None:
    path = study_file(tmp_path / "last.toml", "last", n_trials=3, finetune_steps=100)
    db = Database(postgres_url)
    run = start("run", str(path), "--storage", postgres_url, "--no-progress", cwd=tmp_path)
    number = running_trial(db, "last", [run], after=1)
    time.sleep(0.5)
    run.kill()
    finish(run)
    time.sleep(1)
    assert db.trials_in("last", "RUNNING") == [number]  # nobody left to notice

    # A worker from "another machine": only the study's name and the database.
    code, out, err = finish(start("worker", "last", "--storage", postgres_url, cwd=tmp_path))
    assert code == 0, err + out
    assert f"trial {number} lost" in out
    study = check_study(postgres_url, "last", 3)
    lost_and_retried(study, number)
    db.dispose()


def test_sigterm_on_launch_interrupts_its_workers_leaves_another_study_alone_and_resumes(
    tmp_path: Path, postgres_url: str,
) -> None:

    """Two studies at once on one database; SIGTERM to the launcher of one of them."""
    stopped = study_file(tmp_path / "term.toml", "term", n_trials=4, finetune_steps=60)
    other = study_file(tmp_path / "other.toml", "other", n_trials=3, finetune_steps=10,
                       space={"prune_ratio": [0.1, 0.3]})
    db = Database(postgres_url)
    command = ("launch", str(stopped), "--storage", postgres_url, "--workers", "2")
    launcher = start(*command, cwd=tmp_path)
    bystander = start("launch", str(other), "--storage", postgres_url, "--workers", "1", cwd=tmp_path)
    running_trial(db, "term", [launcher], after=1)
    launcher.send_signal(signal.SIGTERM)
    code, out, err = finish(launcher)
    assert code == 143, err + out
    assert "Traceback" not in out + err
    assert db.trials_in("term", "RUNNING") == []
    study = optuna.load_study(study_name="term", storage=postgres_url)
    interrupted = [t for t in study.trials if t.user_attrs.get("status") == "interrupted"]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    engine = connect(postgres_url)
    records = {r.trial_number: r for r in Repository(engine).trials("term")}
    engine.dispose()
    for trial in interrupted:
        assert records[trial.number].status == "interrupted"
        assert records[trial.number].reason.startswith("interrupted by SIGTERM; retried as trial")

    code, out, err = finish(start(*command, cwd=tmp_path))
    assert code == 0, err + out
    study = check_study(postgres_url, "term", 4)
    for trial in interrupted:
        retries = [t for t in study.trials if t.user_attrs.get("retry_of") == trial.number]
        assert len(retries) == 1 and same_recipe(trial, retries[0])

    code, out, err = finish(bystander)
    assert code == 0, err + out
    other_study = check_study(postgres_url, "other", 3)
    assert all(0.1 <= t.params["prune_ratio"] <= 0.3 for t in other_study.trials if t.params.get("prune_ratio"))
    assert other_study.user_attrs["slimtune_study_file"]["study"]["name"] == "other"
    assert study.user_attrs["slimtune_study_file"]["study"]["name"] == "term"
    db.dispose()
