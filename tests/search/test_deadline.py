"""`--timeout S` bounds the whole run, on a fake clock: the real runner, screen, trial loop,
worker-request loop and confirmation, with the worker process replaced by one whose every request
takes scripted seconds of the fake clock (a request the deadline cuts kills it, as a real one is)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from slimtune.search import isolated
from slimtune.search.config import load_config
from slimtune.search.deadline import Deadline, RunBudget, TimedOut, quantile
from slimtune.search.runner import run_study
from slimtune.spaces import SearchSpace
from slimtune.storage import Repository, connect

S = 60.0
#: the issue's target: wall time <= S + max(5% of S, 10 s)
SLACK = max(0.05 * S, 10.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    perf_counter = monotonic = __call__

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeWorker:
    """A worker process and its pipe, on the fake clock: a request's answer is ready `seconds(message)`
    after it was sent; polling advances the clock as waiting does."""

    def __init__(self, clock: Clock, seconds: Callable[[tuple], float], log: list[tuple]):
        self.clock, self.seconds, self.log = clock, seconds, log
        self.pid, self.exitcode = -1, None
        self.message: tuple | None = None
        self.ready_at = math.inf
        self.busy = False  # a request is waiting for its answer

    # the pipe
    def send(self, message: tuple) -> None:
        if message[0] == "stop":  # the run's end: the evaluator closes its worker
            return
        self.message, self.ready_at = message, self.clock.now + self.seconds(message)
        self.log.append((self.clock.now, message[0]))
        self.busy = True

    def poll(self, timeout: float) -> bool:
        if self.clock.now + timeout >= self.ready_at:
            self.clock.now = max(self.clock.now, self.ready_at)
            return True
        self.clock.now += timeout
        return False

    def recv(self) -> tuple:
        message, self.ready_at, self.busy = self.message, math.inf, False
        replies = {"load": lambda: ("loaded", {"num_classes": 10}), "baseline": lambda: ("ready", _ready()),
                   "evaluate": lambda: ("result", _measured(message[2])), "screen": lambda: ("result", _figures(message[1])),
                   "confirm": lambda: ("result", _confirmed(message[1]))}
        return replies[message[0]]()

    def close(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    # the process
    def is_alive(self) -> bool:
        return True


def _ready() -> dict[str, Any]:
    space = SearchSpace(prune_ratio=(0.0, 0.6), quantization=("none", "int8_weight_only"), precision=("fp32",),
                        runtime=("eager", "compile"), prune_round_to=(1,), prune_scope=("uniform",),
                        kd_temperature=(1.0, 8.0), kd_alpha=None, finetune_steps=20)
    return {"source": "cache", "train_seconds": 0.0, "baseline_accuracy": 0.95, "baseline_balanced_accuracy": None,
            "space": space.to_dict(), "removals": []}


def _measured(seed: int) -> dict[str, Any]:
    """Each trial faster than the last: the front is the latest trial (and the baseline)."""
    return {"accuracy": 0.95, "latency_ms": 1.0 / (1 + seed), "latency_p95_ms": 1.1, "latency_repeats": 5, "peak_memory_mb": 1.0,
            "weight_mb": 0.1, "params": 1000, "macs": 1000, "batch_size": 32}


def _figures(recipe: dict) -> dict[str, Any]:
    return {"latency_ms": 1.0 if recipe["runtime"] == "eager" else 0.5, "peak_memory_mb": 1.0, "weight_mb": 0.1,
            "quantized_layers": 0, "weight_layers": 3, "accuracy": 0.95}


def _confirmed(recipes: list) -> dict[str, Any]:
    return {"round_medians_ms": [[1.0] * 6 for _ in recipes], "blocks": [1] * len(recipes), "batch_size": 32,
            "seconds": 1.0}


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch, write_study, tmp_path: Path):
    """Run `run_study` with --timeout S on the fake clock; `seconds(message, calls)` scripts each
    request (`calls`: how many of that kind came before). Returns (study, end time, requests, lines)."""

    runs: list[int] = []

    def run(seconds: Callable[[tuple, int], float], changes: dict | None = None) -> tuple:
        clock, requests, kills = Clock(), [], []
        counts: dict[str, int] = {}

        def timed(message: tuple) -> float:
            counts[message[0]] = counts.get(message[0], 0) + 1
            return seconds(message, counts[message[0]] - 1)

        def start(self) -> None:
            self._process = self._conn = FakeWorker(clock, timed, requests)

        def kill(self) -> None:  # the kills that cut a request (closing an idle worker is no cut)
            if self._process is not None and self._process.busy:
                kills.append(clock.now)
            self._process = None

        monkeypatch.setattr(isolated.IsolatedEvaluator, "_start", start)
        monkeypatch.setattr(isolated.IsolatedEvaluator, "_kill", kill)
        from slimtune.search.screen import target

        from slimtune.search import many_workers

        # the screen's, the trial loop's and the worker requests' clocks are the fake one
        for module in (target, many_workers, isolated):
            monkeypatch.setattr(module, "time", clock)
        config = load_config(write_study({"study": {"n_trials": 40}, "budget": {"confirm_rounds": 6}, **(changes or {})}))
        runs.append(1)
        url = f"sqlite:///{tmp_path / f'bound{len(runs)}.db'}"
        lines: list[str] = []
        deadline = Deadline(S, clock)
        try:
            run_study(config, url, timeout=deadline, log=lines.append, progress=False)
            raised = None
        except TimedOut as error:
            raised = error
        end = clock.now - deadline.started
        study = optuna.load_study(study_name="tiny", storage=url) if "evaluate" in counts else None
        return study, end, requests, lines, kills, raised, url

    return run


def _trial_seconds(long_trial: int | None = None, long_s: float = 0.0) -> Callable[[tuple, int], float]:
    def seconds(message: tuple, calls: int) -> float:
        if message[0] == "evaluate":
            return long_s if calls == long_trial else 4.0
        return {"load": 2.0, "baseline": 3.0, "confirm": 8.0, "screen": 1.5}[message[0]]

    return seconds


def test_trials_start_only_while_they_and_the_confirmation_fit_and_the_run_ends_by_s(fake_run) -> None:
    study, end, requests, lines, kills, raised, url = fake_run(_trial_seconds())
    assert raised is None and not kills and end <= S
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    # the last trial finished with time for the confirmation, which ran whole
    assert requests[-1][1] == "confirm" and end >= S - 4.0 - 8.0 - 4.0 - 5.0
    assert Repository(connect(url)).confirmations("tiny")
    assert any(line.startswith("--timeout: no trial started with ") for line in lines)


def test_a_trial_running_at_its_stop_is_interrupted_and_the_confirmation_still_fits(fake_run) -> None:
    """Trial 5 hangs (a compile that never returns): it is stopped, as SIGTERM stops a trial, at
    the run's end less the confirmation's time; the confirmation then runs in a fresh worker."""
    study, end, requests, lines, kills, raised, url = fake_run(_trial_seconds(long_trial=5, long_s=1e6))
    assert raised is None and end <= S + SLACK
    hung = study.trials[5]
    assert hung.state == TrialState.FAIL
    record = Repository(connect(url)).trial("tiny", 5)
    assert record.status == "interrupted" and record.reason.startswith(f"interrupted by --timeout {S:g} s; retried as trial")
    # the retry waits for the same command to run again
    assert [t.number for t in study.trials if t.state == TrialState.WAITING] == [len(study.trials) - 1]
    assert len(kills) == 1 and [kind for _, kind in requests[-3:]] == ["load", "baseline", "confirm"]
    assert Repository(connect(url)).confirmations("tiny")
    assert any("the running trial was stopped (interrupted; the same command retries it)" in line for line in lines)


def test_a_confirmation_that_would_not_fit_is_skipped_and_one_that_runs_long_is_stopped_at_s(fake_run) -> None:
    def slow_confirm(message: tuple, calls: int) -> float:
        return 1e6 if message[0] == "confirm" else _trial_seconds()(message, calls)

    study, end, requests, lines, kills, raised, url = fake_run(slow_confirm)
    assert raised is None and S <= end <= S + 1.0 and kills == [pytest.approx(end + 1000.0, abs=0.01)]
    assert any(line.startswith(f"confirmation stopped at --timeout {S:g} s") for line in lines)
    assert not Repository(connect(url)).confirmations("tiny")

    def too_slow(message: tuple, calls: int) -> float:  # one trial is the whole budget
        return 50.0 if message[0] == "evaluate" and calls == 1 else _trial_seconds()(message, calls)

    study, end, requests, lines, kills, raised, url = fake_run(too_slow)
    assert raised is None and end <= S
    assert any(line.startswith("confirmation skipped: about ") and "`slimtune confirm tiny` runs it" in line for line in lines)


def test_a_baseline_longer_than_s_is_stopped_at_s(fake_run) -> None:
    def training(message: tuple, calls: int) -> float:
        return 600.0 if message[0] == "baseline" else 2.0

    study, end, requests, lines, kills, raised, url = fake_run(training)
    assert isinstance(raised, TimedOut) and raised.exit_code == 124 and S <= end <= S + 1.0 and study is None


def test_the_screen_runs_inside_s_and_a_setting_cut_at_s_is_not_measured_not_failed(fake_run) -> None:
    """The screen takes a quarter of S; a compile that hangs past the run's end is cut there and
    the screen ends with what it measured (the in-flight setting not failed), and no trial starts."""
    screened = {"screen": {"enabled": True, "setting_timeout_s": 1000}}
    study, end, requests, lines, kills, raised, url = fake_run(_trial_seconds(), screened)
    assert raised is None and end <= S
    screen = Repository(connect(url)).screen("tiny")
    assert screen is not None and screen.result["seconds"] <= 0.25 * S + 4.0

    def hangs(message: tuple, calls: int) -> float:
        if message[0] == "screen" and message[1]["runtime"] == "compile":
            return 1e6
        return _trial_seconds()(message, calls)

    study, end, requests, lines, kills, raised, url = fake_run(hangs, {"screen": {"enabled": True, "budget_s": 1000,
                                                                                 "setting_timeout_s": 1000}})
    assert raised is None and S <= end <= S + 1.0
    rows = Repository(connect(url)).screen("tiny").result["settings"]
    assert not any(row["reason"].startswith("failed") for row in rows)
    assert any(line.startswith("screen: stopped at the run's --timeout") for line in lines)


def test_the_trial_estimate_is_the_90th_percentile_of_the_trials_so_far() -> None:
    assert quantile([5.0, 1.0, 3.0], 0.9) == 5.0  # fewer than ten: the longest
    assert quantile([float(s) for s in range(1, 21)], 0.9) == 18.0
    clock = Clock()
    study = optuna.create_study(directions=["minimize"])
    budget = RunBudget(Deadline(S, clock), confirm_rounds=0, log=lambda line: None)
    assert budget.trial_estimate(study) is None and budget.may_start(study)
    for number, (seconds, status) in enumerate([(2.0, "complete"), (10.0, "complete"), (40.0, "lost")]):
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE if status == "complete" else TrialState.FAIL,
                                                  values=None if status != "complete" else [1.0],
                                                  user_attrs={"status": status}))
        budget.durations[number] = seconds
    assert budget.trial_estimate(study) == 10.0  # a lost trial's time says nothing (its worker died)
    interrupted = optuna.create_study(directions=["minimize"])  # one stopped at 30 s needs at least that
    for number, status in enumerate(["complete", "interrupted"]):
        interrupted.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE if status == "complete" else TrialState.FAIL,
                                                        values=[1.0] if status == "complete" else None,
                                                        user_attrs={"status": status}))
    assert RunBudget(Deadline(S, clock), confirm_rounds=0, durations={0: 2.0, 1: 30.0}).trial_estimate(interrupted) == 30.0
    clock.now += S - 11.0  # 10 s for the trial, 1 s for stopping it if it runs over: no confirmation here
    assert budget.may_start(study) and budget.trial_stop(study).left() == 10.0
    clock.now += 0.5
    assert not budget.may_start(study)
    # a confirmation's round: each point's warm-up, then its samples up to latency_max_s (10 at least)
    assert budget._round_s(0.0001) == pytest.approx(0.06) and budget._round_s(0.067) == pytest.approx(0.67 + 3.0)
    assert budget._round_s(0.5) == pytest.approx(5.0 + 5.0)


def test_a_confirmation_longer_than_a_quarter_of_s_does_not_hold_the_trials_back() -> None:
    """Its six rounds of a 500-ms baseline (60 s) would leave the trials nothing: they keep the
    time, and the confirmation is skipped at the end (`slimtune confirm` runs it later)."""
    clock = Clock()
    study = optuna.create_study(directions=["minimize"])
    budget = RunBudget(Deadline(S, clock), confirm_rounds=6, restart_s=5.0, objectives=["latency_ms"],
                       log=lambda line: None)
    for number, latency in enumerate([500.0, 400.0]):  # the baseline, and a front point
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[latency],
                                                  user_attrs={"status": "complete", "baseline": number == 0}))
        budget.durations[number] = 4.0
    assert budget.confirmation_estimate(study) > 0.25 * S
    clock.now += S - 5.5
    assert budget.may_start(study) and budget.trial_stop(study).left() == pytest.approx(4.5)
    fast = optuna.create_study(directions=["minimize"])  # a 1-ms model: its confirmation is reserved
    for number, latency in enumerate([1.0, 0.5]):
        fast.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[latency],
                                                 user_attrs={"status": "complete", "baseline": number == 0}))
        budget.durations[number] = 4.0
    assert 0 < budget.confirmation_estimate(fast) <= 0.25 * S and not budget.may_start(fast)
