"""slimtune's own tables, beside Optuna's in the same database (SQLAlchemy 2.0 ORM).

Optuna keeps params, objective values and states; these tables keep what Optuna has no
place for: every measurement of every trial (objectives or not), why a trial failed, the
hardware/software it was measured on, and the Pareto front after each completed trial.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: bump when a table changes, and add the step to storage/migrations.py.
#: 2: ParetoSnapshot.hypervolume; the tables StudyBudget and TrialSlot (exactly N trials across workers).
#: 3: new tables only (RefinedTrial for `slimtune refine`, TargetScreen, ConfirmedMeasurement).
SCHEMA_VERSION = 3


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class SchemaVersion(Base):
    __tablename__ = "slimtune_schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class Fingerprint(Base):
    """Where and with what a study's measurements were taken."""

    __tablename__ = "slimtune_fingerprints"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_name: Mapped[str] = mapped_column(String(512), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    device: Mapped[str] = mapped_column(String(64))
    device_name: Mapped[str] = mapped_column(String(256))
    threads: Mapped[int] = mapped_column(Integer)
    torch_version: Mapped[str] = mapped_column(String(64))
    cuda_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TrialMeasurement(Base):
    """One row per trial, written before Optuna is told, so a lost tell loses nothing."""

    __tablename__ = "slimtune_trial_measurements"
    __table_args__ = (UniqueConstraint("study_name", "trial_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_name: Mapped[str] = mapped_column(String(512), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # complete | failed | stopped | interrupted
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    recipe: Mapped[dict[str, Any]] = mapped_column()
    measurement: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy_drop: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    fingerprint_id: Mapped[int | None] = mapped_column(ForeignKey("slimtune_fingerprints.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ParetoSnapshot(Base):
    """The feasible Pareto front right after one trial completed."""

    __tablename__ = "slimtune_pareto_snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_name: Mapped[str] = mapped_column(String(512), index=True)
    after_trial_number: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    front: Mapped[list[Any]] = mapped_column()  # [{"trial_number": n, "values": [...]}, ...]
    # normalised to the baseline, reference point fixed per study (search/hypervolume.py);
    # None before the baseline completed or for a study created without hypervolume tracking
    hypervolume: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StudyBudget(Base):
    """How many trials a study should finish, across all its workers. Its row is also the lock
    a worker takes (SELECT ... FOR UPDATE) to claim a trial slot, so claims never overshoot."""

    __tablename__ = "slimtune_study_budgets"

    study_name: Mapped[str] = mapped_column(String(512), primary_key=True)
    n_trials: Mapped[int] = mapped_column(Integer)


class TrialSlot(Base):
    """One claim on the study's budget: `claimed` while a worker runs (or is about to run) a
    trial, `done` once that trial finished with a result (complete, failed, stopped), `released`
    when it was interrupted or its worker died (its retry takes a new slot)."""

    __tablename__ = "slimtune_trial_slots"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_name: Mapped[str] = mapped_column(String(512), index=True)
    state: Mapped[str] = mapped_column(String(16))  # claimed | done | released
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker: Mapped[str] = mapped_column(String(256))  # host:pid, for people reading the table
    note: Mapped[str | None] = mapped_column(String(64), nullable=True)  # why it was released
    # the database's clock, the one every worker shares: an unattached claim older than the
    # heartbeat grace period belongs to a worker that died between claiming and starting
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Export(Base):
    """One exported model: where it was written, the sha256 of its files, and what its
    verification in a fresh process measured (an unverified export keeps its reason)."""

    __tablename__ = "slimtune_exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_name: Mapped[str] = mapped_column(String(512), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    hashes: Mapped[dict[str, Any]] = mapped_column()  # relative file name -> sha256
    verified: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    trial_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)  # exported / trial
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RefinedTrial(Base):
    """A trial of the front fine-tuned for longer (`slimtune refine`) and measured again: the
    search's short fine-tune is a cheap estimate, this is the model a user ships. Linked to its
    trial by (study_name, trial_number); a trial may be refined several times (any `steps`)."""

    __tablename__ = "slimtune_refined_trials"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_name: Mapped[str] = mapped_column(String(512), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)  # fine-tuning steps of the refined model
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # complete | failed | stopped
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    recipe: Mapped[dict[str, Any]] = mapped_column()  # the trial's recipe with finetune_steps = steps
    measurement: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy_drop: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class TargetScreen(Base):
    """What a study's target screen measured and decided (search/screen/), once per study:
    a resumed study and every worker read it instead of screening again. `result` holds every
    setting's figures, its verdict and reason, and the choices the search kept."""

    __tablename__ = "slimtune_target_screens"

    study_name: Mapped[str] = mapped_column(String(512), primary_key=True)
    result: Mapped[dict[str, Any]] = mapped_column()
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ConfirmedMeasurement(Base):
    """The latest confirmation of one point of a study's front (or of its baseline): its latency
    re-measured in interleaved rounds with the baseline in one worker process
    (search/confirm.py), its speed-up over the baseline from the same rounds, each with its 95%
    interval, and whether the trial's own figure lies outside what the intervals allow."""

    __tablename__ = "slimtune_confirmations"
    __table_args__ = (UniqueConstraint("study_name", "trial_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_name: Mapped[str] = mapped_column(String(512), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    is_baseline: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float] = mapped_column(Float)
    latency_ci_low_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ci_high_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    speedup_x: Mapped[float] = mapped_column(Float)
    speedup_ci_low_x: Mapped[float | None] = mapped_column(Float, nullable=True)
    speedup_ci_high_x: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: the trial's own median, for reference, and whether it disagrees with the confirmation
    trial_latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    flagged: Mapped[bool] = mapped_column(Boolean)
    rounds: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)  # per-round medians, block, batch size
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
