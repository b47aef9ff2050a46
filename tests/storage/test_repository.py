"""slimtune's own tables through `connect` and `Repository`, the same tests on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import inspect, select, update
from sqlalchemy.orm import Session

from slimtune.storage import Repository, StorageError, TrialRecord, connect, safe_url
from slimtune.storage.schema import SCHEMA_VERSION, SchemaVersion, TrialMeasurement

from .postgres import temporary_database

SLIMTUNE_TABLES = {
    "slimtune_schema_version", "slimtune_fingerprints", "slimtune_trial_measurements", "slimtune_pareto_snapshots",
}

RECIPE = {
    "prune_ratio": 0.25, "prune_importance": "l2", "kd_temperature": 4.0, "kd_alpha": 0.5,
    "finetune_steps": 20, "quantization": "int8_weight_only", "precision": "fp32", "runtime": "eager",
}
BASELINE_RECIPE = {**RECIPE, "prune_ratio": 0.0, "kd_temperature": None, "kd_alpha": 0.0, "finetune_steps": 0,
                   "quantization": "none"}
MEASUREMENT = {
    "accuracy": 0.9861, "latency_ms": 2.5, "latency_p95_ms": 3.1, "latency_repeats": 5, "peak_memory_mb": 1.8,
    "weight_mb": 0.24, "params": 222827, "macs": 5262816, "batch_size": 32,
    "quantized_layers": ["0", "3", "7"], "unquantized_layers": {"0": "single input channel"},
    "finetune_steps_run": 20, "seconds": 0.98,
    "latency_by_batch_size": {"32": {"median_ms": 2.5, "p95_ms": 3.1}},
}
FINGERPRINT = {
    "device": "cpu", "device_name": "Some CPU @ 2.0GHz", "threads": 2, "torch_version": "2.14.1",
    "cuda_version": None, "optuna_version": "5.0.0", "cpu_count": 2,
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file in tmp_path, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'repository.db'}"
    else:
        with temporary_database() as postgres_url:
            yield postgres_url


@pytest.fixture
def repository(url: str) -> Iterator[Repository]:
    engine = connect(url)
    repository = Repository(engine)
    repository.create_schema()
    yield repository
    engine.dispose()


def test_create_schema_twice_is_idempotent(url: str) -> None:
    engine = connect(url)
    try:
        Repository(engine).create_schema()
        Repository(engine).create_schema()
        assert SLIMTUNE_TABLES <= set(inspect(engine).get_table_names())
        with Session(engine) as session:
            assert session.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]
        Repository(engine).check_schema()
    finally:
        engine.dispose()
    # A second engine (another process, say) finds the tables and adds nothing.
    engine = connect(url)
    try:
        repository = Repository(engine)
        repository.create_schema()
        repository.check_schema()
        with Session(engine) as session:
            assert session.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]
    finally:
        engine.dispose()


def test_check_schema_of_a_database_without_slimtune_tables_raises(url: str) -> None:
    engine = connect(url)
    try:
        with pytest.raises(StorageError, match="no slimtune tables") as caught:
            Repository(engine).check_schema()
        assert "\n" not in str(caught.value)
    finally:
        engine.dispose()


def test_fingerprints_round_trip(repository: Repository) -> None:
    first = repository.record_fingerprint("study-a", FINGERPRINT)
    second = repository.record_fingerprint("study-a", {**FINGERPRINT, "threads": 4})
    repository.record_fingerprint("study-b", FINGERPRINT)
    assert isinstance(first, int) and isinstance(second, int) and first != second

    rows = repository.fingerprints("study-a")
    assert [row.id for row in rows] == [first, second]
    assert [row.threads for row in rows] == [2, 4]
    row = rows[0]
    assert (row.study_name, row.device, row.device_name, row.torch_version, row.cuda_version) == (
        "study-a", "cpu", "Some CPU @ 2.0GHz", "2.14.1", None
    )
    # Whatever has no column of its own is kept in `details`, and only that.
    assert row.details == {"optuna_version": "5.0.0", "cpu_count": 2}
    assert row.created_at is not None
    assert len(repository.fingerprints("study-b")) == 1
    assert repository.fingerprints("no-such-study") == []


def test_record_trial_round_trips_recipe_and_measurement(repository: Repository) -> None:
    fingerprint_id = repository.record_fingerprint("study-a", FINGERPRINT)
    repository.record_trial("study-a", 0, status="complete", recipe=BASELINE_RECIPE,
                            measurement={**MEASUREMENT, "accuracy": 0.99}, accuracy_drop=0.0,
                            fingerprint_id=fingerprint_id)
    repository.record_trial("study-a", 1, status="complete", recipe=RECIPE, measurement=MEASUREMENT,
                            accuracy_drop=0.0039, fingerprint_id=fingerprint_id)

    assert repository.trials("study-a") == [
        TrialRecord(0, "complete", None, BASELINE_RECIPE, {**MEASUREMENT, "accuracy": 0.99}, 0.0),
        TrialRecord(1, "complete", None, RECIPE, MEASUREMENT, pytest.approx(0.0039)),
    ]
    # The headline numbers are columns too, so the table can be queried with plain SQL.
    with Session(repository.engine) as session:
        row = session.scalars(select(TrialMeasurement).where(TrialMeasurement.trial_number == 1)).one()
    assert (row.accuracy, row.latency_ms, row.peak_memory_mb, row.seconds) == pytest.approx((0.9861, 2.5, 1.8, 0.98))
    assert row.fingerprint_id == fingerprint_id
    assert row.created_at is not None


def test_record_trial_replaces_the_row_of_the_same_trial_number(repository: Repository) -> None:
    repository.record_trial("study-a", 3, status="complete", recipe=RECIPE, measurement=MEASUREMENT,
                            accuracy_drop=0.01)
    repository.record_trial("study-b", 3, status="complete", recipe=RECIPE, measurement=MEASUREMENT,
                            accuracy_drop=0.02)
    other = {**RECIPE, "precision": "bf16"}
    repository.record_trial("study-a", 3, status="failed", recipe=other,
                            reason="RuntimeError: no bf16 kernel")

    assert repository.trials("study-a") == [TrialRecord(3, "failed", "RuntimeError: no bf16 kernel", other, None, None)]
    with Session(repository.engine) as session:
        rows = session.scalars(select(TrialMeasurement).where(TrialMeasurement.study_name == "study-a")).all()
    assert len(rows) == 1
    assert (rows[0].accuracy, rows[0].latency_ms, rows[0].peak_memory_mb, rows[0].seconds) == (None,) * 4
    # Another study's trial of the same number is untouched.
    assert repository.trials("study-b") == [TrialRecord(3, "complete", None, RECIPE, MEASUREMENT, 0.02)]


def test_trials_come_back_ordered_by_trial_number(repository: Repository) -> None:
    for number in (2, 0, 10, 1):
        repository.record_trial("study-a", number, status="stopped", recipe=RECIPE, reason=f"timeout {number}")
    records = repository.trials("study-a")
    assert [r.trial_number for r in records] == [0, 1, 2, 10]
    assert [r.reason for r in records] == ["timeout 0", "timeout 1", "timeout 2", "timeout 10"]
    assert all(r.status == "stopped" and r.measurement is None for r in records)
    assert repository.trials("no-such-study") == []


def test_snapshots_round_trip_ordered_by_trial_number(repository: Repository) -> None:
    front_3 = [{"trial_number": 0, "values": [3.8, 3.7, 0.99]}, {"trial_number": 3, "values": [2.4, 2.1, 0.994]}]
    front_1 = [{"trial_number": 0, "values": [3.8, 3.7, 0.99]}]
    repository.record_snapshot("study-a", 3, front_3)
    repository.record_snapshot("study-a", 1, front_1)
    repository.record_snapshot("study-a", 2, [])
    repository.record_snapshot("study-b", 0, front_1)

    snapshots = repository.snapshots("study-a")
    assert [s.after_trial_number for s in snapshots] == [1, 2, 3]
    assert [s.size for s in snapshots] == [1, 0, 2]
    assert [s.front for s in snapshots] == [front_1, [], front_3]
    assert all(s.study_name == "study-a" and s.created_at is not None for s in snapshots)
    assert [s.after_trial_number for s in repository.snapshots("study-b")] == [0]
    assert repository.snapshots("no-such-study") == []


def test_tables_at_another_schema_version_are_refused(url: str) -> None:
    engine = connect(url)
    try:
        Repository(engine).create_schema()
        with engine.begin() as connection:
            connection.execute(update(SchemaVersion).values(version=SCHEMA_VERSION + 1))

        for check in (Repository(engine).check_schema, Repository(engine).create_schema):
            with pytest.raises(StorageError) as caught:
                check()
            message = str(caught.value)
            assert "\n" not in message
            assert "version" in message and str(SCHEMA_VERSION + 1) in message and str(SCHEMA_VERSION) in message
        # create_schema does not "repair" a database it refused.
        with Session(engine) as session:
            assert session.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION + 1]
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql+psycopg://slim:s3cret-pw@127.0.0.1:1/x", "postgresql+psycopg://slim:***@127.0.0.1:1/x"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/x", "postgresql+psycopg://postgres@127.0.0.1:1/x"),
    ],
)
def test_connect_to_an_unreachable_server_raises_one_line_without_the_password(url: str, shown: str) -> None:
    pytest.importorskip("psycopg", reason="psycopg (3) is not installed")
    with pytest.raises(StorageError) as caught:
        connect(url)
    message = str(caught.value)
    assert "\n" not in message
    assert "s3cret" not in message
    assert f"cannot connect to {shown!r}" in message
    assert message.startswith("storage: ")


def test_connect_to_sqlite_in_a_missing_folder_raises_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'x.db'}"
    with pytest.raises(StorageError) as caught:
        connect(url)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(url) in message
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("url", ["nosuchdb://host/x", "postgresql+nosuchdriver://u:hidden@h/x", "not a url"])
def test_connect_to_an_unusable_url_raises_one_line(url: str) -> None:
    with pytest.raises(StorageError, match="^storage: cannot use") as caught:
        connect(url)
    assert "\n" not in str(caught.value)
    assert "hidden" not in str(caught.value)


def test_safe_url_hides_only_the_password() -> None:
    assert safe_url("postgresql+psycopg://u:pw@db.example:5432/slim") == "postgresql+psycopg://u:***@db.example:5432/slim"
    assert safe_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert safe_url("not a url") == "not a url"


def test_trial_pages_sort_in_the_database(repository: Repository) -> None:
    """Sorted by a column or by a key inside the measurement JSON, failed trials last either way,
    ties by trial number; the same on SQLite and PostgreSQL."""
    weights = {0: 0.5, 1: 0.1, 2: None, 3: 0.3, 4: 0.1, 5: None}
    for number, weight in weights.items():
        if weight is None:
            repository.record_trial("study-a", number, status="failed", recipe=RECIPE, reason="boom")
        else:
            repository.record_trial("study-a", number, status="complete", recipe=RECIPE,
                                    measurement={**MEASUREMENT, "weight_mb": weight, "latency_ms": 10 - number},
                                    accuracy_drop=0.0)
    repository.record_trial("study-b", 0, status="complete", recipe=RECIPE, measurement=MEASUREMENT)

    def numbers(**kwargs) -> list[int]:
        records, total = repository.trial_page("study-a", **kwargs)
        assert total == 6
        return [r.trial_number for r in records]

    assert numbers() == [0, 1, 2, 3, 4, 5]
    assert numbers(sort="weight_mb") == [1, 4, 3, 0, 2, 5]
    assert numbers(sort="weight_mb", descending=True) == [0, 3, 1, 4, 2, 5]
    assert numbers(sort="latency_ms", descending=True) == [0, 1, 3, 4, 2, 5]  # a column
    assert numbers(sort="status") == [0, 1, 3, 4, 2, 5]
    assert numbers(sort="weight_mb", offset=2, limit=3) == [3, 0, 2]
    assert repository.trial_page("no-such-study") == ([], 0)


def test_one_trial_counts_and_the_latest_front(repository: Repository) -> None:
    fingerprint_id = repository.record_fingerprint("study-a", FINGERPRINT)
    repository.record_trial("study-a", 0, status="complete", recipe=RECIPE, measurement=MEASUREMENT,
                            fingerprint_id=fingerprint_id)
    repository.record_trial("study-a", 1, status="failed", recipe=RECIPE, reason="boom")
    repository.record_trial("study-a", 2, status="stopped", recipe=RECIPE, reason="hopeless")
    record = repository.trial("study-a", 0)
    assert record.measurement == MEASUREMENT and record.fingerprint_id == fingerprint_id
    assert record.created_at is not None and record.created_at.tzinfo is not None
    assert repository.trial("study-a", 9) is None
    counts, latest = repository.status_counts("study-a")
    assert counts == {"complete": 1, "failed": 1, "stopped": 1} and latest == repository.trial("study-a", 2).created_at
    assert repository.status_counts("no-such-study") == ({}, None)
    assert repository.fingerprint(fingerprint_id).device_name == "Some CPU @ 2.0GHz"
    assert repository.latest_fingerprint("study-a").id == fingerprint_id

    assert repository.latest_snapshot("study-a") is None
    repository.record_snapshot("study-a", 0, [{"trial_number": 0, "values": [1.0]}])
    repository.record_snapshot("study-a", 3, [{"trial_number": 3, "values": [0.5]}])
    assert repository.latest_snapshot("study-a").after_trial_number == 3
    assert repository.snapshot_fronts("study-a") == [(0, [{"trial_number": 0, "values": [1.0]}]),
                                                     (3, [{"trial_number": 3, "values": [0.5]}])]
    assert repository.has_tables()
