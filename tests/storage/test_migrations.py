"""Schema versions: tables at version 1 are refused with the command that upgrades them, the
upgrade adds what versions 2 and 3 need and keeps every row, and a newer schema is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import inspect, select, text, update

from slimtune.search.cli import main
from slimtune.storage import Repository, StorageError, connect
from slimtune.storage.migrations import upgrade
from slimtune.storage.schema import (
    SCHEMA_VERSION, ConfirmedMeasurement, ParetoSnapshot, RefinedTrial, SchemaVersion, StudyBudget, TargetScreen,
    TrialSlot,
)

from .postgres import temporary_database

NEW_IN_2 = {StudyBudget.__tablename__, TrialSlot.__tablename__}
NEW_IN_3 = {RefinedTrial.__tablename__, TargetScreen.__tablename__, ConfirmedMeasurement.__tablename__}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
    else:
        with temporary_database() as postgres_url:
            yield postgres_url


def make_version_1(url: str) -> None:
    """slimtune's tables as version 1 left them, with one snapshot row."""
    engine = connect(url)
    Repository(engine).create_schema()
    Repository(engine).record_snapshot("old", 0, [{"trial_number": 0, "values": [1.0, 2.0]}])
    with engine.begin() as connection:
        for table in NEW_IN_2 | NEW_IN_3:
            connection.execute(text(f"DROP TABLE {table}"))
        connection.execute(text("ALTER TABLE slimtune_pareto_snapshots DROP COLUMN hypervolume"))
        connection.execute(update(SchemaVersion).values(version=1))
    engine.dispose()


def test_version_1_is_refused_with_the_upgrade_command_and_upgrade_keeps_every_row(
    url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert SCHEMA_VERSION == 3
    make_version_1(url)
    engine = connect(url)
    with pytest.raises(StorageError) as caught:
        Repository(engine).check_compatible()
    assert "version 1, this slimtune needs 3" in str(caught.value)
    assert Repository(engine).screen("old") is None  # reads stay read-only on an old database
    assert "slimtune upgrade --storage URL" in str(caught.value)

    assert main(["upgrade", "--storage", url]) == 0
    assert capsys.readouterr().out.strip() == "slimtune tables: version 1 -> 3"
    Repository(engine).check_schema()
    tables = set(inspect(engine).get_table_names())
    assert NEW_IN_2 | NEW_IN_3 <= tables
    assert Repository(engine).refined("old") == []
    Repository(engine).record_screen("old", {"settings": []}, 1.0)
    assert Repository(engine).screen("old").result == {"settings": []}
    assert "hypervolume" in {c["name"] for c in inspect(engine).get_columns("slimtune_pareto_snapshots")}
    [snapshot] = Repository(engine).snapshots("old")
    assert snapshot.front == [{"trial_number": 0, "values": [1.0, 2.0]}] and snapshot.hypervolume is None

    assert main(["upgrade", "--storage", url]) == 0  # twice is harmless
    assert "already up to date" in capsys.readouterr().out
    engine.dispose()


def test_a_newer_schema_is_refused_by_every_command_and_by_upgrade(
    url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    engine = connect(url)
    Repository(engine).create_schema()
    with engine.begin() as connection:
        connection.execute(update(SchemaVersion).values(version=SCHEMA_VERSION + 1))
    with pytest.raises(StorageError, match=r"version 4, newer than this slimtune \(3\): upgrade slimtune"):
        upgrade(engine)
    with engine.connect() as connection:
        assert connection.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION + 1]
    engine.dispose()
    assert main(["upgrade", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newer than this slimtune" in err


def test_upgrade_on_an_empty_database_creates_the_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["upgrade", "--storage", url]) == 0
    assert "slimtune tables: created at version 3" in capsys.readouterr().out
    engine = connect(url)
    Repository(engine).check_schema()
    assert ParetoSnapshot.__tablename__ in inspect(engine).get_table_names()
    engine.dispose()


def test_version_2_upgrades_to_3_by_creating_the_refined_table_and_keeps_every_row(url: str) -> None:
    engine = connect(url)
    repository = Repository(engine)
    repository.create_schema()
    repository.record_trial(study_name="old", trial_number=0, recipe={}, status="complete",
                            measurement={"accuracy": 0.9}, accuracy_drop=0.0)
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {RefinedTrial.__tablename__}"))
        connection.execute(update(SchemaVersion).values(version=2))
    assert upgrade(engine) == (2, 3)
    assert Repository(engine).refined("old") == []
    [record] = Repository(engine).trials("old")
    assert record.measurement == {"accuracy": 0.9}
    engine.dispose()
