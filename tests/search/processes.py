"""Real `slimtune` processes for the worker and signal scenarios, and what to check afterwards.

The scenarios run the tiny study of tests/conftest.py with one thread per process (on a
2-core machine, several processes with two threads each spend their time waiting for each
other), short heartbeats (1 s, grace 3 s) so a killed worker is noticed within seconds, and
enough fine-tuning steps that a trial is still running when the test sends its signal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from slimtune.storage import normalize_url
from slimtune.storage.slots import counts_as_result
from tests.conftest import TINY_STUDY, toml_value

FAST_WORKERS = {"heartbeat_interval_s": 1, "grace_period_s": 3, "max_retries": 2}


def study_file(path: Path, name: str, n_trials: int, finetune_steps: int = 60, **sections: dict[str, Any]) -> Path:
    """The tiny study, one thread, fast heartbeats; `sections` override fields."""
    content = {k: dict(v) for k, v in TINY_STUDY.items()}
    content["study"].update(name=name, n_trials=n_trials)
    content["target"]["threads"] = 1
    content["budget"]["finetune_steps"] = finetune_steps
    content["workers"] = dict(FAST_WORKERS)
    content["space"]["quantization"] = ["none"]  # keeps torchao (3 s of imports a process) out
    for section, fields in sections.items():
        content.setdefault(section, {}).update(fields)
    path.write_text("".join(
        f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items()) + "\n"
        for section, fields in content.items()
    ))
    return path


def start(*argv: str, cwd: Path) -> subprocess.Popen:
    """`slimtune ARGV` as a process of its own (its own session: signals reach it alone)."""
    return subprocess.Popen(
        [sys.executable, "-m", "slimtune.search.cli", *argv], cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"{process.args} ran past {timeout} s\nstdout:\n{out}\nstderr:\n{err}") from None
    return process.returncode, out, err


class Database:
    """Direct reads of Optuna's and slimtune's tables while workers run (no Optuna objects: a
    poll must be cheap and must not create anything)."""

    def __init__(self, url: str):
        self.engine = create_engine(normalize_url(url), poolclass=NullPool)

    def rows(self, sql: str, **params: Any) -> list[tuple]:
        try:
            with self.engine.connect() as connection:
                return [tuple(row) for row in connection.execute(text(sql), params)]
        except Exception as error:  # tables not created yet
            if "no such table" in str(error) or "does not exist" in str(error):
                return []
            raise

    def trials_in(self, study: str, state: str) -> list[int]:
        return [n for (n,) in self.rows(
            "SELECT t.number FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = :study AND t.state = :state ORDER BY t.number", study=study, state=state,
        )]

    def slot_owner(self, study: str, trial_number: int, timeout: float = 30) -> int:
        """The pid of the worker running a trial (its slot names it once the trial started)."""
        def owner() -> int | None:
            rows = self.rows("SELECT worker FROM slimtune_trial_slots WHERE study_name = :study "
                             "AND trial_number = :n AND state = 'claimed'", study=study, n=trial_number)
            return int(rows[0][0].rsplit(":", 1)[1]) if rows else None

        return wait_until(owner, timeout, f"the worker of trial {trial_number}")

    def dispose(self) -> None:
        self.engine.dispose()


def wait_until(condition: Callable[[], Any], timeout: float, what: str, processes: list[subprocess.Popen] = ()) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for process in processes:
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(f"{process.args} exited {process.returncode} while waiting for {what}\n"
                                     f"stdout:\n{out}\nstderr:\n{err}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def running_trial(db: Database, study: str, processes: list[subprocess.Popen], *, after: int = 0,
                  timeout: float = 180) -> int:
    """The number of a trial (numbered `after` or later) that is running now."""
    def found() -> int | None:
        numbers = [n for n in db.trials_in(study, "RUNNING") if n >= after]
        return numbers[0] + 1 if numbers else None  # +1: trial 0 is falsy

    return wait_until(found, timeout, f"a running trial >= {after} of {study!r}", processes) - 1


def check_study(url: str, study_name: str, n_trials: int) -> optuna.Study:
    """The guarantees: exactly n_trials results, nothing RUNNING or WAITING, every slot settled,
    a slimtune row for every trial, and no recipe run twice except as the retry of a trial that
    never finished."""
    from slimtune.storage import Repository, SlotBook, connect

    study = optuna.load_study(study_name=study_name, storage=normalize_url(url))
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0, states
    results = [t for t in trials if counts_as_result(t.state, t.user_attrs.get("status"))]
    assert len(results) == n_trials, [(t.number, t.state, t.user_attrs.get("status")) for t in trials]

    engine = connect(url)
    try:
        records = {r.trial_number: r for r in Repository(engine).trials(study_name)}
        assert set(records) == {t.number for t in trials}, (sorted(records), [t.number for t in trials])
        for trial in trials:
            record = records[trial.number]
            if counts_as_result(trial.state, trial.user_attrs.get("status")):
                assert record.status in ("complete", "failed", "stopped"), (trial.number, record)
            else:
                assert trial.state == TrialState.FAIL and record.status in ("interrupted", "lost"), (trial.number, record)
        usage = SlotBook(engine).usage(study_name)
        assert (usage.done, usage.active) == (n_trials, 0), usage
        slot_trials = [s.trial_number for s in SlotBook(engine).slots(study_name) if s.state == "done"]
        assert sorted(slot_trials) == sorted(t.number for t in results)
    finally:
        engine.dispose()

    # No recipe measured twice: params repeat only along a retry chain of unfinished trials.
    retried = {t.number: t.user_attrs.get("retry_of") for t in trials}
    seen: dict[str, int] = {}
    for trial in results:
        key = repr(sorted(trial.params.items()))
        assert key not in seen, f"trials {seen[key]} and {trial.number} ran the same recipe {key}"
        seen[key] = trial.number
    for number, original in retried.items():
        if original is not None:  # a worker killed while sampling leaves some parameters unset
            assert same_recipe(study.trials[original], study.trials[number])
    return study


def same_recipe(original: optuna.trial.FrozenTrial, retry: optuna.trial.FrozenTrial) -> bool:
    """The retry has every parameter the original had, with the same value."""
    return all(retry.params.get(name) == value for name, value in original.params.items())
