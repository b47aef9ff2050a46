"""Trials in a worker process: every fault path on the CPU, with injected faults.

Each test runs a real study (driver + spawned worker) on the tiny digits study; the worker's
evaluator is wrapped by a factory from `faults.py` that misbehaves on chosen trials.
"""

from __future__ import annotations

import signal

import optuna
import pytest

from slimtune.search.config import load_config
from slimtune.search.runner import run_study
from slimtune.storage import Repository, connect

pytestmark = pytest.mark.processes  # starts real slimtune processes: scheduled first (tests/conftest.py)

TrialState = optuna.trial.TrialState


def _run(write_study, tmp_path, factory, changes=None):
    url = f"sqlite:///{tmp_path / 'isolation.db'}"
    study = run_study(load_config(write_study(changes)), url, progress=False, log=lambda _: None,
                      evaluator_factory=f"tests.search.faults:{factory}")
    rows = {row.trial_number: row for row in Repository(connect(url)).trials(study.study_name)}
    return study, rows


def test_every_fault_fails_its_trial_and_the_study_goes_on(write_study, tmp_path):
    study, rows = _run(write_study, tmp_path, "one_fault_per_trial", {
        "study": {"n_trials": 9},
        # the hang costs the timeout + 10 s grace; a trial here takes 1-3 s on a loaded 2-core machine
        "budget": {"trial_timeout_s": 12, "memory_limit_mb": 1500},
    })
    expected = {
        1: "worker process exited with code 3 during injected exit",
        2: "worker process crashed (SIGSEGV) during injected segfault",
        3: "RuntimeError: injected failure",
        4: "FloatingPointError: measurement accuracy is nan",
        5: "timeout after ",
        6: "out of memory: worker used ",
        7: "RuntimeError: CUDA error: an illegal memory access was encountered",
    }
    for number, reason in expected.items():
        assert rows[number].status == "failed", (number, rows[number].reason)
        assert rows[number].reason.startswith(reason), (number, rows[number].reason)
        assert study.trials[number].state == TrialState.FAIL
        assert study.trials[number].user_attrs["reason"] == rows[number].reason
    assert rows[5].reason.endswith("(injected hang)")
    assert "> memory_limit_mb=1500 during injected allocate" in rows[6].reason
    # a fresh worker took the next trial each time: the study finished its other trials
    for number in (0, 8):
        assert rows[number].status == "complete"
        assert study.trials[number].state == TrialState.COMPLETE
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_a_combination_that_fails_unpruned_too_fails_later_trials_at_once(write_study, tmp_path):
    study, rows = _run(write_study, tmp_path, "int8_dynamic_always_fails", {
        "study": {"n_trials": 12},
        "space": {"quantization": ["none", "int8_dynamic"]},
    })
    failed = sorted(n for n, row in rows.items() if row.status == "failed")
    assert len(failed) >= 2, "the sampler should pick int8_dynamic more than once in 12 trials"
    first, *later = failed
    assert rows[first].reason == "RuntimeError: operation not permitted when stream is capturing"
    for number in later:
        assert rows[number].reason == (
            "known-bad combination (quantization=int8_dynamic, precision=fp32, memory_format=contiguous, "
            "runtime=eager): RuntimeError: operation not permitted when stream is capturing"
        )
    assert all(rows[n].status == "complete" for n in rows if n not in failed)


def test_ctrl_c_records_the_interrupted_trial_and_kills_the_worker(write_study, tmp_path):
    # Python's own Ctrl-C handler, as a terminal gives it: a test runner started in the
    # background by a non-interactive shell inherits SIGINT ignored, and Python then installs none
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    url = f"sqlite:///{tmp_path / 'interrupted.db'}"
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(load_config(write_study()), url, progress=False, log=lambda _: None,
                      evaluator_factory="tests.search.faults:interrupt_on_trial_1")
    finally:
        signal.signal(signal.SIGINT, previous)
    rows = {r.trial_number: r for r in Repository(connect(url)).trials("tiny")}
    assert rows[0].status == "complete"
    assert rows[1].status == "interrupted"
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.trials[0].state == TrialState.COMPLETE
    import multiprocessing

    assert not [p for p in multiprocessing.active_children() if p.name == "slimtune-worker"]
