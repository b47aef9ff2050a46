"""All reads and writes of slimtune's own tables go through `Repository`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, delete, func, inspect, select
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.orm import sessionmaker

from .schema import (
    SCHEMA_VERSION, Base, ConfirmedMeasurement, Export, Fingerprint, ParetoSnapshot, RefinedTrial, SchemaVersion,
    TargetScreen, TrialMeasurement,
)
from .database import StorageError, safe_url


@dataclass(frozen=True)
class TrialRecord:
    trial_number: int
    status: str
    reason: str | None
    recipe: dict[str, Any]
    measurement: dict[str, Any] | None
    accuracy_drop: float | None
    # where and when: not part of a trial's result, so equality ignores them
    created_at: datetime | None = field(default=None, compare=False)
    fingerprint_id: int | None = field(default=None, compare=False)


class Repository:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._has_tables = False

    def create_schema(self, attempts: int = 3) -> None:
        """Create the tables (idempotent) and check their version.

        Two processes creating the tables at the same moment on PostgreSQL collide in the
        catalog (IntegrityError on pg_type/pg_class); the loser retries and then finds them.
        """
        for attempt in range(attempts):
            try:
                Base.metadata.create_all(self.engine)
                with self._session.begin() as session:
                    if not session.scalars(select(SchemaVersion.version)).all():
                        session.add(SchemaVersion(version=SCHEMA_VERSION))
                break
            except (IntegrityError, ProgrammingError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        self.check_schema()

    def has_tables(self) -> bool:
        """Whether slimtune's tables exist (a database Optuna alone wrote has none); once they
        do, they stay, so the answer is remembered."""
        if not self._has_tables:
            self._has_tables = inspect(self.engine).has_table(SchemaVersion.__tablename__)
        return self._has_tables

    def check_compatible(self) -> None:
        """Refuse, before anything is written, a database whose slimtune tables are at another
        version; a database without them is fine (they will be created)."""
        if inspect(self.engine).has_table(SchemaVersion.__tablename__):
            self.check_schema()

    def check_schema(self) -> None:
        with self._session() as session:
            try:
                versions = session.scalars(select(SchemaVersion.version)).all()
            except Exception:
                raise StorageError(f"storage: {safe_url(str(self.engine.url))!r} has no slimtune tables") from None
        if versions == [SCHEMA_VERSION]:
            return
        url = safe_url(str(self.engine.url))
        if len(versions) == 1 and versions[0] < SCHEMA_VERSION:
            raise StorageError(
                f"storage: slimtune tables in {url!r} are at version {versions[0]}, this slimtune needs "
                f"{SCHEMA_VERSION}: stop its workers, then run `slimtune upgrade --storage URL`"
            )
        if len(versions) == 1:
            raise StorageError(
                f"storage: slimtune tables in {url!r} are at version {versions[0]}, newer than this slimtune "
                f"({SCHEMA_VERSION}): upgrade slimtune"
            )
        raise StorageError(f"storage: slimtune tables in {url!r} are at versions {versions}; expected one")

    def record_fingerprint(self, study_name: str, fingerprint: dict[str, Any]) -> int:
        known = {"device", "device_name", "threads", "torch_version", "cuda_version"}
        row = Fingerprint(
            study_name=study_name,
            details={k: v for k, v in fingerprint.items() if k not in known},
            **{k: fingerprint.get(k) for k in known},
        )
        with self._session.begin() as session:
            session.add(row)
        return row.id

    def record_trial(
        self,
        study_name: str,
        trial_number: int,
        *,
        status: str,
        recipe: dict[str, Any],
        measurement: dict[str, Any] | None = None,
        reason: str | None = None,
        accuracy_drop: float | None = None,
        fingerprint_id: int | None = None,
    ) -> None:
        """Insert or replace the row of one trial."""
        measurement = measurement or {}
        with self._session.begin() as session:
            row = session.scalar(
                select(TrialMeasurement).where(
                    TrialMeasurement.study_name == study_name, TrialMeasurement.trial_number == trial_number
                )
            ) or TrialMeasurement(study_name=study_name, trial_number=trial_number)
            row.status, row.reason, row.recipe = status, reason, recipe
            row.measurement = measurement or None
            row.accuracy = measurement.get("accuracy")
            row.latency_ms = measurement.get("latency_ms")
            row.peak_memory_mb = measurement.get("peak_memory_mb")
            row.seconds = measurement.get("seconds")
            row.accuracy_drop = accuracy_drop
            row.fingerprint_id = fingerprint_id
            session.add(row)

    def set_status(
        self, study_name: str, trial_number: int, *, status: str, reason: str, recipe: dict[str, Any] | None = None
    ) -> None:
        """Change a trial's status and reason, keeping any measurement its row already has (a
        worker judged dead may have finished after all); insert the row when there is none."""
        with self._session.begin() as session:
            row = session.scalar(
                select(TrialMeasurement).where(
                    TrialMeasurement.study_name == study_name, TrialMeasurement.trial_number == trial_number
                )
            )
            if row is None:
                row = TrialMeasurement(study_name=study_name, trial_number=trial_number, recipe=recipe or {})
                session.add(row)
            row.status, row.reason = status, reason

    def trials(self, study_name: str) -> list[TrialRecord]:
        with self._session() as session:
            rows = session.scalars(
                select(TrialMeasurement).where(TrialMeasurement.study_name == study_name)
                .order_by(TrialMeasurement.trial_number)
            ).all()
        return [_record(r) for r in rows]

    def trial(self, study_name: str, trial_number: int) -> TrialRecord | None:
        with self._session() as session:
            row = session.scalar(select(TrialMeasurement).where(
                TrialMeasurement.study_name == study_name, TrialMeasurement.trial_number == trial_number
            ))
        return _record(row) if row is not None else None

    def trial_page(
        self, study_name: str, *, sort: str = "trial_number", descending: bool = False, offset: int = 0, limit: int = 50
    ) -> tuple[list[TrialRecord], int]:
        """One page of a study's trials, sorted in the database, and how many there are in all.

        `sort` is a column of the table or a scalar key of the measurement (`weight_mb`,
        `latency_p95_ms`, ...); trials without that value (failed ones) come last either way,
        and ties go by trial number. Paging in SQL keeps a study of thousands of trials fast.
        """
        columns = TrialMeasurement.__table__.columns
        key = columns[sort] if sort in columns else TrialMeasurement.measurement[sort].as_float()
        where = TrialMeasurement.study_name == study_name
        with self._session() as session:
            total = session.scalar(select(func.count()).select_from(TrialMeasurement).where(where)) or 0
            rows = session.scalars(
                select(TrialMeasurement).where(where)
                .order_by((key.desc() if descending else key.asc()).nulls_last(), TrialMeasurement.trial_number)
                .offset(offset).limit(limit)
            ).all()
        return [_record(r) for r in rows], total

    def status_counts(self, study_name: str) -> tuple[dict[str, int], datetime | None]:
        """Trials per status and when the latest was recorded, in one query."""
        with self._session() as session:
            rows = session.execute(
                select(TrialMeasurement.status, func.count(), func.max(TrialMeasurement.created_at))
                .where(TrialMeasurement.study_name == study_name).group_by(TrialMeasurement.status)
            ).all()
        latest = max((when for _, _, when in rows if when is not None), default=None)
        return {status: count for status, count, _ in rows}, _utc(latest)

    def record_snapshot(
        self, study_name: str, after_trial_number: int, front: list[dict[str, Any]], hypervolume: float | None = None
    ) -> None:
        with self._session.begin() as session:
            session.add(ParetoSnapshot(
                study_name=study_name, after_trial_number=after_trial_number, size=len(front), front=front,
                hypervolume=hypervolume,
            ))

    def latest_snapshot(self, study_name: str) -> ParetoSnapshot | None:
        """The front as last written (highest id: the most recent of concurrent writers)."""
        with self._session() as session:
            return session.scalar(
                select(ParetoSnapshot).where(ParetoSnapshot.study_name == study_name)
                .order_by(ParetoSnapshot.id.desc()).limit(1)
            )

    def snapshot_fronts(self, study_name: str) -> list[tuple[int, list[Any]]]:
        """(after_trial_number, front) of every snapshot in trial order: the columns alone, which
        reads thousands of snapshots in half the time the ORM objects take."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ParetoSnapshot.after_trial_number, ParetoSnapshot.front)
                .where(ParetoSnapshot.study_name == study_name)
                .order_by(ParetoSnapshot.after_trial_number, ParetoSnapshot.id)
            ).all()
        return [(number, front) for number, front in rows]

    def snapshots(self, study_name: str) -> list[ParetoSnapshot]:
        with self._session() as session:
            return list(session.scalars(
                select(ParetoSnapshot).where(ParetoSnapshot.study_name == study_name)
                .order_by(ParetoSnapshot.after_trial_number, ParetoSnapshot.id)
            ).all())

    def fingerprint(self, fingerprint_id: int) -> Fingerprint | None:
        with self._session() as session:
            return session.get(Fingerprint, fingerprint_id)

    def latest_fingerprint(self, study_name: str) -> Fingerprint | None:
        with self._session() as session:
            return session.scalar(
                select(Fingerprint).where(Fingerprint.study_name == study_name).order_by(Fingerprint.id.desc()).limit(1)
            )

    def fingerprints(self, study_name: str) -> list[Fingerprint]:
        with self._session() as session:
            return list(session.scalars(
                select(Fingerprint).where(Fingerprint.study_name == study_name).order_by(Fingerprint.id)
            ).all())

    def record_export(self, study_name: str, trial_number: int, *, format: str, path: str, hashes: dict[str, str],
                      verified: bool, reason: str | None = None, accuracy: float | None = None,
                      trial_accuracy: float | None = None, latency_ms: float | None = None,
                      latency_ratio: float | None = None) -> int:
        row = Export(study_name=study_name, trial_number=trial_number, format=format, path=path, hashes=hashes,
                     verified=verified, reason=reason, accuracy=accuracy, trial_accuracy=trial_accuracy,
                     latency_ms=latency_ms, latency_ratio=latency_ratio)
        with self._session.begin() as session:
            session.add(row)
        return row.id

    def exports(self, study_name: str) -> list[Export]:
        with self._session() as session:
            return list(session.scalars(
                select(Export).where(Export.study_name == study_name).order_by(Export.id)
            ).all())

    def record_refined(self, study_name: str, trial_number: int, *, steps: int, seed: int, status: str,
                       recipe: dict[str, Any], reason: str | None = None, measurement: dict[str, Any] | None = None,
                       accuracy_drop: float | None = None) -> int:
        """One refined model of a trial (`slimtune refine`), complete with its measurement or
        failed/stopped with its reason."""
        row = RefinedTrial(
            study_name=study_name, trial_number=trial_number, steps=steps, seed=seed, status=status, reason=reason,
            recipe=recipe, measurement=measurement, accuracy_drop=accuracy_drop,
            accuracy=(measurement or {}).get("accuracy"), seconds=(measurement or {}).get("seconds"),
        )
        with self._session.begin() as session:
            session.add(row)
        return row.id

    def refined(self, study_name: str) -> list[RefinedTrial]:
        """Every refined model of a study, oldest first (empty for a study never refined, and for
        tables made before refined models existed, which the dashboard still reads)."""
        if not inspect(self.engine).has_table(RefinedTrial.__tablename__):
            return []
        with self._session() as session:
            return list(session.scalars(
                select(RefinedTrial).where(RefinedTrial.study_name == study_name).order_by(RefinedTrial.id)
            ).all())

    def record_screen(self, study_name: str, result: dict[str, Any], seconds: float) -> None:
        """Store the study's target screen; a study keeps the first one written (a second
        worker that screened at the same moment loses quietly and reads the stored one)."""
        try:
            with self._session.begin() as session:
                if session.get(TargetScreen, study_name) is None:
                    session.add(TargetScreen(study_name=study_name, result=result, seconds=seconds))
        except IntegrityError:
            pass

    def screen(self, study_name: str) -> TargetScreen | None:
        """The study's stored target screen; None for a study screened never (or before
        slimtune had screens: an older database lacks the table, and reads stay read-only)."""
        if not inspect(self.engine).has_table(TargetScreen.__tablename__):
            return None
        with self._session() as session:
            return session.get(TargetScreen, study_name)

    def record_confirmations(self, study_name: str, rows: list[dict[str, Any]]) -> None:
        """Replace the study's confirmed figures with `rows` (one confirmation run), in one
        transaction: a reader sees the old run or the new one, never a mix."""
        with self._session.begin() as session:
            session.execute(delete(ConfirmedMeasurement).where(ConfirmedMeasurement.study_name == study_name))
            session.add_all(ConfirmedMeasurement(study_name=study_name, **row) for row in rows)

    def confirmation_stamp(self, study_name: str) -> int | None:
        """Changes whenever the study is confirmed again (the newest row's id): a cache key."""
        with self._session() as session:
            return session.scalar(select(func.max(ConfirmedMeasurement.id))
                                  .where(ConfirmedMeasurement.study_name == study_name))

    def confirmations(self, study_name: str) -> dict[int, dict[str, Any]]:
        """trial number -> its confirmed figures; empty for a study never confirmed."""
        with self._session() as session:
            rows = session.scalars(
                select(ConfirmedMeasurement).where(ConfirmedMeasurement.study_name == study_name)
            ).all()
        columns = [c.name for c in ConfirmedMeasurement.__table__.columns if c.name not in ("id", "study_name")]
        return {row.trial_number: {name: getattr(row, name) for name in columns} for row in rows}


def _record(row: TrialMeasurement) -> TrialRecord:
    return TrialRecord(
        row.trial_number, row.status, row.reason, row.recipe, row.measurement, row.accuracy_drop,
        _utc(row.created_at), row.fingerprint_id,
    )


def _utc(when: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC."""
    return when.replace(tzinfo=timezone.utc) if when is not None and when.tzinfo is None else when
