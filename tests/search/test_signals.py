"""SIGTERM and SIGINT on a real `slimtune run`: the running trial ends FAIL `interrupted`,
nothing stays RUNNING, the exit code names the signal, and the same command resumes."""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from slimtune.search import signals
from slimtune.storage import Repository, connect
from slimtune.storage.slots import counts_as_result

from .processes import Database, check_study, finish, running_trial, start, study_file

pytestmark = pytest.mark.processes  # starts real slimtune processes: scheduled first (tests/conftest.py)


@pytest.mark.parametrize("signum, code, resume", [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, False)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_on_run_interrupts_the_trial_and_the_same_command_resumes(
    tmp_path: Path, signum: int, code: int, resume: bool,
) -> None:

    path = study_file(tmp_path / "study.toml", "signalled", n_trials=3, finetune_steps=100)
    url = f"sqlite:///{tmp_path / 'signals.db'}"
    db = Database(url)
    command = ("run", str(path), "--storage", url, "--no-progress")
    process = start(*command, cwd=tmp_path)
    number = running_trial(db, "signalled", [process], after=1)  # trial 0 (the baseline) is quick
    process.send_signal(signum)
    returncode, out, err = finish(process)
    assert returncode == code, err
    assert "interrupted: finished trials are kept; run the same command to resume" in err
    assert "Traceback" not in err

    study = optuna.load_study(study_name="signalled", storage=url)
    assert study.get_trials(states=(TrialState.RUNNING,)) == []
    stopped = study.trials[number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["status"] == "interrupted"
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == number]
    assert [t.state for t in retry] == [TrialState.WAITING] and retry[0].params == stopped.params
    engine = connect(url)
    record = Repository(engine).trial("signalled", number)
    engine.dispose()
    name = signal.Signals(signum).name
    assert record.status == "interrupted"
    assert record.reason == f"interrupted by {name}; retried as trial {retry[0].number} when the study resumes"

    if resume:
        returncode, out, err = finish(start(*command, cwd=tmp_path))
        assert returncode == 0, err
        study = check_study(url, "signalled", 3)
        rerun = study.trials[retry[0].number]
        assert counts_as_result(rerun.state, rerun.user_attrs.get("status")), rerun
    db.dispose()


def test_interrupted_carries_its_signal_and_exit_code() -> None:
    assert signals.Interrupted(signal.SIGTERM).exit_code == 143
    assert signals.exit_code(signals.Interrupted(signal.SIGINT)) == 130
    assert signals.exit_code(KeyboardInterrupt()) == 130
    assert isinstance(signals.Interrupted(signal.SIGTERM), KeyboardInterrupt)


def test_a_signal_in_a_deferred_region_waits_for_the_next_delivered_point() -> None:
    import os

    reached = []
    with signals.handle_signals():
        with pytest.raises(signals.Interrupted) as caught:
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                reached.append("deferred region finished")
                os.kill(os.getpid(), signal.SIGTERM)  # a second signal while stopping is ignored
                reached.append("second signal ignored")
            reached.append("between regions")  # no delivered point yet: still held
            with signals.delivered():
                reached.append("never")
    assert caught.value.signum == signal.SIGTERM
    assert reached == ["deferred region finished", "second signal ignored", "between regions"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
