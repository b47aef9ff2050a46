"""Trial slots: claims never exceed the budget, even from many processes at once, and slots
whose owner died are settled from the Optuna state of their trial."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
from optuna.trial import TrialState
from sqlalchemy import update

from slimtune.storage import Repository, SlotBook, connect
from slimtune.storage.schema import TrialSlot

from .postgres import temporary_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'slots.db'}"
    else:
        with temporary_database() as postgres_url:
            yield postgres_url


@pytest.fixture
def book(url: str) -> Iterator[SlotBook]:
    engine = connect(url)
    Repository(engine).create_schema()
    yield SlotBook(engine, worker="test:1")
    engine.dispose()


def nothing_known(number: int) -> tuple[TrialState, str | None]:
    raise AssertionError(f"trial {number} was looked up")


def test_claims_stop_at_the_budget_and_settled_slots_count(book: SlotBook) -> None:
    book.set_budget("s", 3)
    claims = [book.claim("s", nothing_known, 60)[0] for _ in range(3)]
    assert all(claims)
    assert book.claim("s", nothing_known, 60) == (None, book.usage("s"))
    assert book.usage("s").active == 3
    book.settle(claims[0], "done")
    book.settle(claims[1], "released", "interrupted")
    assert not book.settle(claims[1], "done")  # already ended: the first word stands
    claim, usage = book.claim("s", nothing_known, 60)
    assert claim is not None and (usage.done, usage.active, usage.free) == (1, 2, 0)
    book.set_budget("s", 4)  # `run --n-trials 4` on a resume raises the budget
    assert book.usage("s").free == 1
    book.set_budget("s", 9, replace=False)  # a worker does not change it
    assert book.usage("s").n_trials == 4


def test_a_study_from_before_slots_gets_its_finished_trials_as_done_slots(book: SlotBook) -> None:
    book.set_budget("old", 5, results=[0, 1, 3])
    assert book.usage("old") == type(book.usage("old"))(5, 3, 0)
    assert [s.trial_number for s in book.slots("old")] == [0, 1, 3]


def test_concurrent_claims_from_many_processes_never_overshoot(url: str) -> None:
    """Eight engines (eight connections, as eight workers have) claim at once: exactly N win."""
    engine = connect(url)
    Repository(engine).create_schema()
    SlotBook(engine).set_budget("race", 5)
    engines = [connect(url) for _ in range(8)]
    won: list[int] = []
    barrier = threading.Barrier(len(engines))

    def worker(index: int) -> None:
        book = SlotBook(engines[index], worker=f"w{index}")
        barrier.wait()
        while True:
            claim, _ = book.claim("race", nothing_known, 60)
            if claim is None:
                return
            won.append(claim.slot_id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(engines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert len(won) == 5 and len(set(won)) == 5
        assert SlotBook(engine).usage("race").active == 5
    finally:
        for other in engines:
            other.dispose()
        engine.dispose()


def test_slots_whose_owner_died_are_settled_from_their_trial(book: SlotBook) -> None:
    book.set_budget("s", 6)
    outcomes = {
        10: (TrialState.COMPLETE, "complete"),   # owner died after tell: done
        11: (TrialState.FAIL, "failed"),         # a result of its own: done
        12: (TrialState.FAIL, "interrupted"),    # to be retried: released
        13: (TrialState.FAIL, None),             # died mid-trial, failed as lost: released
        14: (TrialState.RUNNING, None),          # still running: kept
    }
    def all_running(number: int) -> tuple[TrialState, str | None]:
        return TrialState.RUNNING, None

    for number in outcomes:
        claim, _ = book.claim("s", all_running, 60)
        book.attach(claim, number)
    orphan, _ = book.claim("s", all_running, 60)  # claimed, no trial started: its worker died
    with book.engine.begin() as connection:
        connection.execute(update(TrialSlot).where(TrialSlot.id == orphan.slot_id).values(
            claimed_at=datetime.now(timezone.utc) - timedelta(minutes=10)))
    assert book.usage("s").free == 0

    claim, usage = book.claim("s", lambda number: outcomes[number], grace_period_s=60)
    states = {s.trial_number: (s.state, s.note) for s in book.slots("s")}
    assert states[10] == ("done", None) and states[11] == ("done", None)
    assert states[12] == ("released", "interrupted") and states[13] == ("released", "lost")
    assert states[14] == ("claimed", None)
    assert [s.note for s in book.slots("s") if s.id == orphan.slot_id] == ["no trial started"]
    assert claim is not None and (usage.done, usage.active) == (2, 2)  # 14 and the new claim


def test_a_fresh_unattached_claim_is_not_taken_for_an_orphan(book: SlotBook) -> None:
    book.set_budget("s", 1)
    book.claim("s", nothing_known, grace_period_s=60)
    assert book.claim("s", nothing_known, grace_period_s=60)[0] is None
    assert [s.state for s in book.slots("s")] == ["claimed"]
