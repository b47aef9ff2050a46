"""`--timeout S`: a bound on the whole run (baseline, target screen, trials, confirmation), so a
user on a batch scheduler gets the run's end by S, not its last trial's start.

- `Deadline`: S seconds from when the run started, on one clock (a fake one in tests).
- The worker process's requests are cut when their deadline passes (search/isolated.py): the
  worker is killed, and `TimedOut` is raised where it waited, as SIGTERM raises `Interrupted`:
  a trial ends FAIL with status `interrupted` and is retried when the same command runs again;
  the screen ends with what it measured; a confirmation is reported as stopped.
- `RunBudget` says whether a trial may start: only when the trials so far say it can finish
  before the time the confirmation needs (an estimate from this study's own durations: the
  90th percentile of its finished trials, the longest while fewer than ten have run; an
  interrupted one counts with the time it ran, a lower bound of its retry's), and when a
  trial starts, the time at which it is stopped (the run's end less that confirmation's time).
  The trials leave the confirmation at most a quarter of S; it runs only when its estimate fits
  in what is left (else it is skipped, said so), and is stopped at S.

What is estimated is said as estimated in the log; the bound itself never depends on an
estimate: every stage waits on the worker with the deadline as a hard limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # the CLI imports this module for every command: Optuna loads when a run needs it
    import optuna
    from optuna.trial import FrozenTrial

Clock = Callable[[], float]
#: the confirmation's samples last at least this long (objectives/latency.py times blocks of about
#: 1 ms: a faster forward is called k times per sample)
MIN_SAMPLE_S = 0.001
#: samples taken whatever `latency_max_s` says (objectives/latency.py's floor)
FLOOR_SAMPLES = 10
#: the trials' durations that decide whether another fits: their 90th percentile
TRIAL_QUANTILE = 0.9
#: a stopped trial's stop comes this much before the confirmation's estimated time (killing the
#: worker and noticing it take a moment)
STOP_MARGIN_S = 1.0
#: the most of S the trials leave to the confirmation (the screen's default share too): one
#: estimated longer is skipped at the end (`slimtune confirm` runs it), and the trials keep its
#: time. On the shared 2-core CPU the demo's baseline once timed at 116 ms a batch, and
#: reserving its six rounds (~35 s) ended a 60-s run at 29 s with 3 trials.
CONFIRM_SHARE = 0.25


class TimedOut(KeyboardInterrupt):
    """The run reached its `--timeout`: what was running stops the way SIGTERM stops it."""

    exit_code = 124  # as timeout(1) reports a command it stopped

    def __init__(self, seconds: float):
        super().__init__(f"--timeout {seconds:g} s")
        self.seconds = seconds


@dataclass
class Deadline:
    """The end of a run `seconds` after it started, on `clock`."""

    seconds: float
    clock: Clock = time.monotonic
    started: float = field(default=math.nan)

    def __post_init__(self) -> None:
        if math.isnan(self.started):
            self.started = self.clock()

    @property
    def at(self) -> float:
        return self.started + self.seconds

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.at - self.clock()

    def passed(self) -> bool:
        return self.left() <= 0

    def earlier(self, by_s: float) -> "Deadline":
        """The same run's deadline `by_s` seconds sooner (a trial's, leaving the confirmation's time)."""
        return Stop(self, max(0.0, by_s))

    def timed_out(self) -> TimedOut:
        return TimedOut(self.seconds)


class Stop(Deadline):
    """A stage's stop within a run: `by_s` before the run's deadline; raises the run's `TimedOut`."""

    def __init__(self, run: Deadline, by_s: float):
        self.run, self.by_s = run, by_s
        super().__init__(run.seconds, run.clock, run.started)

    @property
    def at(self) -> float:
        return self.run.at - self.by_s


def process_age_s() -> float:
    """Seconds since this process started (Linux; 0 elsewhere): `slimtune run --timeout S` counts
    S from there, its imports included, as the user's `time` and a batch scheduler do."""
    try:
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            up_s = float(uptime.read().split()[0])
        import os

        return max(0.0, up_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def trial_seconds(trial: FrozenTrial) -> float | None:
    """A finished trial's wall time as Optuna recorded it."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile (the largest value while there are fewer than 1 / (1 - q))."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@dataclass
class RunBudget:
    """When trials may start and stop within a run's deadline, and whether its confirmation fits.

    `restart_s`: what a fresh worker costs (loading the workload and the cached baseline, the
    probe): a trial stopped at its deadline leaves no worker, and the confirmation needs one.
    `objectives`: the study's objective names (its latency, where it has one, sizes the
    confirmation's rounds)."""

    deadline: Deadline
    confirm_rounds: int
    #: the study's latency settings: warm-up calls, samples, and the seconds after which sampling stops
    latency_warmup: int = 10
    latency_repeats: int = 50
    latency_max_s: float = 3.0
    restart_s: float = 0.0
    objectives: Sequence[str] = ()
    log: Callable[[str], None] = print
    #: trial number -> seconds, measured on the deadline's clock by `timed`
    durations: dict[int, float] = field(default_factory=dict)

    # -- estimates ------------------------------------------------------------------------
    def _seconds(self, trial: FrozenTrial) -> float | None:
        return self.durations.get(trial.number, trial_seconds(trial))

    def trial_estimate(self, study: optuna.Study) -> float | None:
        """What the next trial will take: the 90th percentile of this study's finished trials,
        an interrupted one with the time it ran (it needs at least that: its retry is often the
        next trial), a lost one left out (its worker died: its time says nothing); None before any."""
        from optuna.trial import TrialState

        seconds = [s for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                   if t.user_attrs.get("status") != "lost" and (s := self._seconds(t)) is not None]
        return quantile(seconds, TRIAL_QUANTILE) if seconds else None

    def confirmation_estimate(self, study: optuna.Study, extra_point_s: float = 0.0, restart: bool = False) -> float:
        """The confirmation's time: each point (the baseline and the feasible front) rebuilt as
        its trial built it (about its trial's time) and timed `confirm_rounds` times;
        `extra_point_s`: one more point (a trial about to start may join the front); `restart`:
        plus a fresh worker (after a trial stopped at its deadline, which kills the worker)."""
        from optuna.trial import TrialState

        if not self.confirm_rounds:
            return 0.0
        points = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("baseline")]
        points += [t for t in _front(study) if not t.user_attrs.get("baseline")]
        if len(points) < 2 and not extra_point_s:
            return 0.0  # nothing to confirm: no time needed
        index = list(self.objectives).index("latency_ms") if "latency_ms" in self.objectives else None
        total = (self.restart_s if restart else 0.0) + extra_point_s
        for trial in points:
            latency_s = trial.values[index] / 1000 if index is not None and trial.values else 0.0
            total += (self._seconds(trial) or 0.0) + self.confirm_rounds * self._round_s(latency_s)
        if extra_point_s:
            total += self.confirm_rounds * self._round_s(0.0)
        return total

    def test_estimate(self, study: optuna.Study, restart: bool = False) -> float:
        """The test split's time: the baseline and each feasible front point rebuilt as its trial
        built it (about its trial's time), plus a fresh worker with `restart`."""
        from optuna.trial import TrialState

        points = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("baseline")]
        points += [t for t in _front(study) if not t.user_attrs.get("baseline")]
        return (self.restart_s if restart else 0.0) + sum(self._seconds(t) or 0.0 for t in points)

    def _round_s(self, latency_s: float) -> float:
        """One point's share of a confirmation round: its warm-up, then its samples until
        `latency_max_s` once the floor's were taken."""
        sample = max(latency_s, MIN_SAMPLE_S)
        timed = min(self.latency_repeats * sample, max(self.latency_max_s, min(FLOOR_SAMPLES, self.latency_repeats) * sample))
        return self.latency_warmup * sample + timed

    def _reserve(self, study: optuna.Study, extra_point_s: float = 0.0, restart: bool = False) -> float:
        """The confirmation's time the trials leave free: its estimate, or nothing when that is
        more than CONFIRM_SHARE of the run (it will not run; the trials keep the time)."""
        estimate = self.confirmation_estimate(study, extra_point_s, restart)
        return estimate if estimate <= CONFIRM_SHARE * self.deadline.seconds else 0.0

    # -- decisions ------------------------------------------------------------------------
    def may_start(self, study: optuna.Study) -> bool:
        """Whether a trial may start now: its estimate and the confirmation (with it on the front)
        fit in what is left. The first trial of a study has no estimate: it starts while any time
        is left, and is stopped at its deadline if it runs past it."""
        left = self.deadline.left()
        estimate = self.trial_estimate(study)
        if estimate is None:
            return left - self._reserve(study) > 0
        # the confirmation after it, with it on the front; and the trial must end before its stop
        after = max(self._reserve(study, extra_point_s=estimate), self._reserve(study, restart=True) + STOP_MARGIN_S)
        needed = estimate + after
        if needed <= left:
            return True
        self.log(f"--timeout: no trial started with {left:.0f} s left: one takes about {estimate:.0f} s "
                 f"(90th percentile of this study's), the confirmation and stopping about {needed - estimate:.0f} s "
                 "(estimated)")
        return False

    def trial_stop(self, study: optuna.Study) -> Deadline:
        """When a trial starting now is stopped: the confirmation's time, in the fresh worker that
        stopping it calls for, before the run's end."""
        return self.deadline.earlier(self._reserve(study, restart=True) + STOP_MARGIN_S)

    def timed(self, objective: Callable[[optuna.Trial], Any], evaluator: Any) -> Callable[[optuna.Trial], Any]:
        """`objective` with the trial's stop set on `evaluator` and its time recorded."""

        def run(trial: optuna.Trial) -> Any:
            started = self.deadline.clock()
            with evaluator.until(self.trial_stop(trial.study)):
                try:
                    return objective(trial)
                finally:
                    self.durations[trial.number] = self.deadline.clock() - started

        return run


def _front(study: optuna.Study) -> list[FrozenTrial]:
    try:
        return study.best_trials
    except (ValueError, RuntimeError):  # no completed trial yet
        return []
