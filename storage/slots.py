"""Exactly N trials across many workers: a trial runs only on a slot claimed in a transaction.

Optuna counts `n_trials` per process, and its MaxTrialsCallback overshoots by up to workers - 1
(each worker has asked its next trial before it sees the others finish). So before asking
Optuna for a trial, a worker locks the study's budget row (a row lock; on SQLite the write lock), counts the slots that are done or in use, and inserts a new `claimed` slot
only while that count is below the budget. The trial it then runs is attached to the slot.

A slot ends `done` when its trial finished with a result of its own (complete, failed,
stopped), or `released` when the trial was interrupted or its worker died: those trials are
retried, and the retry claims a slot of its own. Every claim first settles the slots whose
owner cannot (it died after Optuna had the trial's end but before it settled its slot, or
before it had started a trial at all), from the Optuna state of their trial, so a dead worker
never holds a slot for ever.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from optuna.trial import TrialState
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .schema import StudyBudget, TrialSlot

#: statuses (slimtune's `status` user attribute) of a FAIL trial that count as a result
RESULT_STATUSES = ("failed", "stopped")

#: trial number -> (its Optuna state, its `status` user attribute or None)
TrialOutcome = Callable[[int], tuple[TrialState, str | None]]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def counts_as_result(state: TrialState, status: str | None) -> bool:
    return state == TrialState.COMPLETE or (state == TrialState.FAIL and status in RESULT_STATUSES)


@dataclass(frozen=True)
class Claim:
    slot_id: int
    study_name: str


@dataclass(frozen=True)
class Usage:
    """The budget of a study and how much of it is used, as of the last claim."""

    n_trials: int
    done: int
    active: int

    @property
    def free(self) -> int:
        return self.n_trials - self.done - self.active


def _utc(moment: datetime) -> datetime:
    """Naive UTC: SQLite hands back naive times, PostgreSQL aware ones."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


class SlotBook:
    """The slot table of one database, for one worker process."""

    def __init__(self, engine: Engine, worker: str | None = None):
        self.engine = engine
        self.worker = worker or worker_name()
        self._session = sessionmaker(engine, expire_on_commit=False)

    # -- the budget ---------------------------------------------------------------------------

    def set_budget(self, study_name: str, n_trials: int, results: Iterable[int] = (), *, replace: bool = True) -> None:
        """Create the study's budget row, or (`replace`) set its n_trials. A study that ran before
        slots existed gets a `done` slot for each trial number in `results`."""
        for attempt in range(2):
            try:
                with self._session.begin() as session:
                    self._lock(session, study_name)
                    row = session.scalar(select(StudyBudget).where(StudyBudget.study_name == study_name))
                    if row is None:
                        session.add(StudyBudget(study_name=study_name, n_trials=n_trials))
                        session.add_all(
                            TrialSlot(study_name=study_name, state="done", trial_number=number, worker="before slots")
                            for number in results
                        )
                    elif replace:
                        row.n_trials = n_trials
                return
            except IntegrityError:  # another process created the row first: now it exists
                if attempt:
                    raise

    def usage(self, study_name: str) -> Usage:
        with self._session() as session:
            return self._usage(session, study_name)

    @staticmethod
    def _usage(session: Session, study_name: str, n_trials: int | None = None) -> Usage:
        if n_trials is None:
            n_trials = session.scalar(select(StudyBudget.n_trials).where(StudyBudget.study_name == study_name)) or 0
        rows = session.execute(
            select(TrialSlot.state, func.count()).where(TrialSlot.study_name == study_name).group_by(TrialSlot.state)
        ).all()
        by_state = dict(rows)
        return Usage(n_trials, by_state.get("done", 0), by_state.get("claimed", 0))

    # -- claims -------------------------------------------------------------------------------

    def claim(self, study_name: str, outcome: TrialOutcome, grace_period_s: float) -> tuple[Claim | None, Usage]:
        """A new slot when the budget has room (after settling slots no live worker holds)."""
        with self._session.begin() as session:
            self._lock(session, study_name)
            budget = session.scalar(select(StudyBudget).where(StudyBudget.study_name == study_name))
            if budget is None:
                raise LookupError(f"study {study_name!r} has no trial budget")
            self._settle_orphans(session, study_name, outcome, grace_period_s)
            usage = self._usage(session, study_name, budget.n_trials)
            if usage.free <= 0:
                return None, usage
            slot = TrialSlot(study_name=study_name, state="claimed", worker=self.worker)
            session.add(slot)
            session.flush()
            return Claim(slot.id, study_name), Usage(usage.n_trials, usage.done, usage.active + 1)

    @staticmethod
    def _lock(session: Session, study_name: str) -> None:
        """Take the study's budget row for this transaction before reading anything: a no-op
        UPDATE row-locks it on PostgreSQL (as SELECT ... FOR UPDATE would) and, on SQLite, takes
        the write lock up front, so a read-then-write claim never meets a newer snapshot."""
        session.execute(
            update(StudyBudget).where(StudyBudget.study_name == study_name).values(n_trials=StudyBudget.n_trials)
        )

    def _settle_orphans(self, session: Session, study_name: str, outcome: TrialOutcome, grace_period_s: float) -> None:
        claimed = session.scalars(
            select(TrialSlot).where(TrialSlot.study_name == study_name, TrialSlot.state == "claimed")
        ).all()
        if not claimed:
            return
        now = _utc(session.execute(select(func.now())).scalar_one())
        for slot in claimed:
            if slot.trial_number is None:
                if (now - _utc(slot.claimed_at)).total_seconds() > grace_period_s:
                    slot.state, slot.note = "released", "no trial started"
                continue
            state, status = outcome(slot.trial_number)
            if state in (TrialState.RUNNING, TrialState.WAITING):
                continue
            if counts_as_result(state, status):
                slot.state = "done"
            else:
                slot.state, slot.note = "released", status or "lost"

    def attach(self, claim: Claim, trial_number: int) -> None:
        with self._session.begin() as session:
            session.execute(update(TrialSlot).where(TrialSlot.id == claim.slot_id).values(trial_number=trial_number))

    def settle(self, claim: Claim, state: str, note: str | None = None) -> bool:
        """End a claimed slot as `done` or `released`; False when someone else already ended it."""
        with self._session.begin() as session:
            result = session.execute(
                update(TrialSlot).where(TrialSlot.id == claim.slot_id, TrialSlot.state == "claimed")
                .values(state=state, note=note)
            )
            return result.rowcount == 1

    def release_trial(self, study_name: str, trial_number: int, note: str) -> bool:
        """Release the slot of a trial that will not finish (its worker died)."""
        with self._session.begin() as session:
            result = session.execute(
                update(TrialSlot).where(
                    TrialSlot.study_name == study_name, TrialSlot.trial_number == trial_number,
                    TrialSlot.state == "claimed",
                ).values(state="released", note=note)
            )
            return result.rowcount > 0

    def slots(self, study_name: str) -> list[TrialSlot]:
        with self._session() as session:
            return list(session.scalars(
                select(TrialSlot).where(TrialSlot.study_name == study_name).order_by(TrialSlot.id)
            ).all())
