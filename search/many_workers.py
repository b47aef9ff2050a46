"""Running trials as one of many workers on one study: claim a slot, run one trial, settle the
slot; retry trials whose worker died or was stopped; wait while other workers still run trials.

`slimtune run`, each `slimtune worker` and each process `slimtune launch` starts go through
`run_trials`. What it guarantees, across any number of workers on one PostgreSQL database:

- exactly `n_trials` trials finish with a result (complete, failed, stopped): slots
  (storage/slots.py) are claimed in a transaction before Optuna is asked for a trial;
- a trial whose worker died (SIGKILL, a lost host) is failed once its heartbeats stop for the
  grace period, by whichever worker looks next (or the next one to start), and retried with
  the same parameters but none of the dead run's results: Optuna's own retry callback copies
  every system attribute, the dead run's constraint included, after which the retry's own
  `set_constraint` is ignored and the retry stays infeasible for ever;
- a trial stopped by SIGTERM/SIGINT ends FAIL with status `interrupted` and is retried when the
  study resumes;
- a live trial wrongly judged dead keeps its measurement in slimtune's table (written before
  Optuna is told), and its worker goes on.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from slimtune.storage import Claim, Repository, SlotBook
from slimtune.storage.slots import counts_as_result

from slimtune.search import signals
from slimtune.search.config import WorkersSection
from slimtune.search.deadline import TimedOut

Log = Callable[[str], None]
Callback = Callable[[optuna.Study, FrozenTrial], None]

#: user attributes a retry keeps (the rest describe the dead run)
KEPT_USER_ATTRS = ("baseline", "screen_winner", "prune_ladder")


def _without_results(system_attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in system_attrs.items() if not (k == "constraints" or k.startswith("constraints:"))}


def retry_trial(study: optuna.Study, trial: FrozenTrial, max_retries: int) -> int | None:
    """Enqueue `trial`'s parameters again as a WAITING trial; its number, or None when this
    recipe was already retried `max_retries` times.

    Keeps Optuna's own bookkeeping (`failed_trial`, `retry_history`, as
    RetryHeartbeatStaleTrialCallback writes them) but none of the dead run's constraints."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > max_retries:
        return None
    system_attrs = _without_results(trial.system_attrs)
    system_attrs.update(failed_trial=trial.system_attrs.get("failed_trial", trial.number), retry_history=history)
    user_attrs = {k: trial.user_attrs[k] for k in KEPT_USER_ATTRS if k in trial.user_attrs}
    user_attrs["retry_of"] = trial.number
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=user_attrs, system_attrs=system_attrs,
    ))
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return max(t.number for t in waiting if t.user_attrs.get("retry_of") == trial.number)


@dataclass
class LostTrialHandler:
    """Optuna's `heartbeat_stale_trial_callback`: runs once for each trial that Optuna failed
    because its heartbeats stopped. Releases the trial's slot, retries it and says why."""

    repository: Repository
    slots: SlotBook
    settings: WorkersSection
    log: Log = print

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.lost(study, trial, f"no heartbeat for {self.settings.grace_period_s} s (its worker died or stalled)")

    def lost(self, study: optuna.Study, trial: FrozenTrial, why: str) -> None:
        retry = retry_trial(study, trial, self.settings.max_retries)
        self.slots.release_trial(study.study_name, trial.number, "lost")
        then = f"retried as trial {retry}" if retry is not None else f"not retried (max_retries={self.settings.max_retries})"
        reason = f"lost: {why}; {then}"
        self.repository.set_status(
            study.study_name, trial.number, status="lost", reason=reason, recipe=trial.user_attrs.get("recipe"),
        )
        self.log(f"trial {trial.number} {reason}")


def _study_id(study: optuna.Study) -> int:
    return study._storage.get_study_id_from_name(study.study_name)


def _trial(study: optuna.Study, study_id: int, number: int) -> FrozenTrial:
    storage = study._storage
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))


def fail_running(study: optuna.Study, handler: LostTrialHandler) -> list[int]:
    """Fail every RUNNING trial now and hand it to `handler`. Only for a process that knows no
    other one can be running trials of this study (it holds the SQLite file)."""
    failed = []
    storage, study_id = study._storage, _study_id(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
                handler.lost(study, storage.get_trial(trial_id), "its process ended while it ran (found by the next "
                             "process on this SQLite file)")
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    return failed


@dataclass
class _AttachedObjective:
    """The objective, after it has tied the trial Optuna handed out to this worker's slot."""

    objective: Callable[[optuna.Trial], Sequence[float]]
    slots: SlotBook
    claim: Claim
    trial_number: int | None = None

    def __call__(self, trial: optuna.Trial) -> Sequence[float]:
        self.trial_number = trial.number
        self.slots.attach(self.claim, trial.number)
        return self.objective(trial)


@dataclass
class Worker:
    """One process's loop over the trials of one study."""

    study: optuna.Study
    objective: Callable[[optuna.Trial], Sequence[float]]
    slots: SlotBook
    repository: Repository
    settings: WorkersSection
    log: Log = print
    callbacks: list[Callback] = field(default_factory=list)
    catch: tuple[type[Exception], ...] = ()
    #: asked before each trial; True ends this worker's loop (the study's stop_when said so)
    should_stop: Callable[[], bool] | None = None
    finished: int = 0

    def __post_init__(self) -> None:
        self._study_id = _study_id(self.study)
        self._told: FrozenTrial | None = None

    def _trial(self, number: int) -> FrozenTrial:
        return _trial(self.study, self._study_id, number)

    def _remember(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """An optimize callback: the trial as told, so settling its slot needs no second read."""
        self._told = trial

    def _outcome(self, number: int) -> tuple[TrialState, str | None]:
        trial = self._trial(number)
        return trial.state, trial.user_attrs.get("status")

    def run(self, timeout: float | None = None, poll_s: float | None = None) -> int:
        """Run trials until the study's budget is used up (waiting while other workers still run
        trials, one of which may need a retry) or `timeout` seconds passed; returns how many
        trials this worker finished with a result."""
        started = time.monotonic()
        poll_s = poll_s or float(self.settings.heartbeat_interval_s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            while True:
                signals.check()
                if timeout is not None and time.monotonic() - started >= timeout:
                    break
                if self.should_stop is not None and self.should_stop():
                    break
                with signals.deferred():
                    optuna.storages.fail_stale_trials(self.study)
                    claim, usage = self.slots.claim(self.study.study_name, self._outcome, self.settings.grace_period_s)
                if claim is None:
                    if usage.active == 0:
                        break
                    with signals.delivered():
                        time.sleep(poll_s)
                    continue
                self._run_one(claim)
        return self.finished

    def _run_one(self, claim: Claim) -> None:
        attached = _AttachedObjective(self.objective, self.slots, claim)
        self._told = None
        try:
            with signals.deferred():
                self.study.optimize(attached, n_trials=1, catch=self.catch, callbacks=[self._remember, *self.callbacks])
        except KeyboardInterrupt as interrupt:
            with signals.deferred():
                self._after_interrupt(claim, attached.trial_number, interrupt)
            raise
        except Exception:
            with signals.deferred():
                if attached.trial_number is not None and self._judged_lost(claim, attached.trial_number):
                    return
                self.slots.settle(claim, "released", "error")
            raise
        with signals.deferred():
            told = self._told if self._told is not None else self._trial(attached.trial_number)
            state, status = told.state, told.user_attrs.get("status")
            if counts_as_result(state, status):
                self.slots.settle(claim, "done")
                self.finished += 1
            elif not self._judged_lost(claim, attached.trial_number):
                self.slots.settle(claim, "released", status or "no result")

    def _after_interrupt(self, claim: Claim, number: int | None, interrupt: KeyboardInterrupt) -> None:
        """The trial ends FAIL `interrupted` (Optuna told FAIL already when the objective was
        interrupted; a KeyboardInterrupt from elsewhere is failed here) and is retried on resume."""
        self.slots.settle(claim, "released", "interrupted")
        if number is None:
            return
        trial = self._trial(number)
        if trial.state == TrialState.RUNNING:
            storage = self.study._storage
            storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(self._study_id, number),
                                           state=TrialState.FAIL)
            trial = self._trial(number)
        if trial.state != TrialState.FAIL:
            return
        name = interrupt.args[0] if isinstance(interrupt, (signals.Interrupted, TimedOut)) else "Ctrl-C"
        retry = retry_trial(self.study, trial, self.settings.max_retries)
        then = f"; retried as trial {retry} when the study resumes" if retry is not None else ""
        self.repository.set_status(self.study.study_name, number, status="interrupted",
                                   reason=f"interrupted by {name}{then}", recipe=trial.user_attrs.get("recipe"))

    def _judged_lost(self, claim: Claim, number: int) -> bool:
        """True when another worker failed this live trial as lost (no heartbeat within the grace
        period) while it ran: its measurement stays in slimtune's table, the loop goes on."""
        trial = self._trial(number)
        record = self.repository.trial(self.study.study_name, number)
        if trial.state != TrialState.FAIL or record is None or record.measurement is None:
            return False
        self.slots.settle(claim, "released", "lost")
        self.repository.set_status(
            self.study.study_name, number, status="lost",
            reason=f"judged lost (no heartbeat for {self.settings.grace_period_s} s) while it was still running; "
                   "its measurement is kept here and its retry measures the recipe again",
        )
        self.log(f"trial {number} finished after another worker had judged it lost; its measurement is kept")
        return True
