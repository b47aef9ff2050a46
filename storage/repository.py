"""All reads and writes of slimtune's own tables go through `Repository`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import time

from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from .schema import SCHEMA_VERSION, Base, Export, Fingerprint, ParetoSnapshot, SchemaVersion, TrialMeasurement
from .database import StorageError, safe_url


@dataclass(frozen=True)
class TrialRecord:
    trial_number: int
    status: str
    reason: str | None
    recipe: dict[str, Any]
    measurement: dict[str, Any] | None
    accuracy_drop: float | None


class Repository:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

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
        if versions != [SCHEMA_VERSION]:
            raise StorageError(
                f"storage: slimtune tables are at version {versions}, this slimtune needs {SCHEMA_VERSION}"
            )

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

    def trials(self, study_name: str) -> list[TrialRecord]:
        with self._session() as session:
            rows = session.scalars(
                select(TrialMeasurement).where(TrialMeasurement.study_name == study_name)
                .order_by(TrialMeasurement.trial_number)
            ).all()
        return [
            TrialRecord(r.trial_number, r.status, r.reason, r.recipe, r.measurement, r.accuracy_drop) for r in rows
        ]

    def record_snapshot(self, study_name: str, after_trial_number: int, front: list[dict[str, Any]]) -> None:
        with self._session.begin() as session:
            session.add(ParetoSnapshot(
                study_name=study_name, after_trial_number=after_trial_number, size=len(front), front=front
            ))

    def snapshots(self, study_name: str) -> list[ParetoSnapshot]:
        with self._session() as session:
            return list(session.scalars(
                select(ParetoSnapshot).where(ParetoSnapshot.study_name == study_name)
                .order_by(ParetoSnapshot.after_trial_number, ParetoSnapshot.id)
            ).all())

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
