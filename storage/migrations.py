"""Upgrade slimtune's own tables from an older schema version to `SCHEMA_VERSION`.

Nothing upgrades silently: every command refuses tables at another version (`Repository.
check_schema`), and `slimtune upgrade --storage URL` runs these steps, once, while no worker of
the old version is running. Each step is alembic's portable DDL (the same code on SQLite and
PostgreSQL) inside one transaction with the version update, so an upgrade that fails leaves the
tables as they were. Tables new in a version are created by `create_all` at the end.

Optuna's own tables have their own upgrade (`optuna storage upgrade`); `upgrade_storage` runs
both.
"""

from __future__ import annotations

from typing import Callable

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Column, Engine, Float, insert, inspect, select, text, update

from .database import StorageError, safe_url
from .schema import SCHEMA_VERSION, Base, SchemaVersion


def _v1_to_v2(operations: Operations) -> None:
    """ParetoSnapshot.hypervolume (nullable: snapshots taken before it stay None). The budget and
    slot tables are new tables, created afterwards."""
    columns = {c["name"] for c in inspect(operations.get_bind()).get_columns("slimtune_pareto_snapshots")}
    if "hypervolume" not in columns:
        operations.add_column("slimtune_pareto_snapshots", Column("hypervolume", Float, nullable=True))


def _v2_to_v3(operations: Operations) -> None:
    """Version 3 only adds tables (refined trials, the target screen, confirmations): `create_all` creates them afterwards."""


#: from version -> the step to the next version
STEPS: dict[int, Callable[[Operations], None]] = {1: _v1_to_v2, 2: _v2_to_v3}


def stored_version(engine: Engine) -> int | None:
    """The version slimtune's tables are at; None when there are none."""
    if not inspect(engine).has_table(SchemaVersion.__tablename__):
        return None
    with engine.connect() as connection:
        versions = connection.scalars(select(SchemaVersion.version)).all()
    if len(versions) != 1:
        raise StorageError(f"storage: slimtune_schema_version holds {sorted(versions)}; expected one row")
    return versions[0]


def upgrade(engine: Engine) -> tuple[int | None, int]:
    """Bring slimtune's tables to `SCHEMA_VERSION`; returns (version before, version after).

    On PostgreSQL the version table is locked for the transaction, so two upgrades started at
    once run one after the other (the second finds nothing to do)."""
    url = safe_url(str(engine.url))
    with engine.begin() as connection:
        if not inspect(connection).has_table(SchemaVersion.__tablename__):
            Base.metadata.create_all(connection)
            connection.execute(insert(SchemaVersion).values(version=SCHEMA_VERSION))
            return None, SCHEMA_VERSION
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"LOCK TABLE {SchemaVersion.__tablename__} IN ACCESS EXCLUSIVE MODE"))
        versions = connection.scalars(select(SchemaVersion.version)).all()
        if len(versions) != 1:
            raise StorageError(f"storage: slimtune_schema_version in {url!r} holds {sorted(versions)}; expected one row")
        before = versions[0]
        if before > SCHEMA_VERSION:
            raise StorageError(
                f"storage: slimtune tables in {url!r} are at version {before}, newer than this slimtune "
                f"({SCHEMA_VERSION}): upgrade slimtune"
            )
        operations = Operations(MigrationContext.configure(connection))
        for version in range(before, SCHEMA_VERSION):
            STEPS[version](operations)
        Base.metadata.create_all(connection)
        if before != SCHEMA_VERSION:
            connection.execute(update(SchemaVersion).values(version=SCHEMA_VERSION))
    return before, SCHEMA_VERSION


def upgrade_storage(url: str) -> list[str]:
    """`slimtune upgrade`: Optuna's tables, then slimtune's; one line per thing done."""
    import optuna

    from .database import connect, engine_kwargs, normalize_url

    engine = connect(url)
    done = []
    try:
        url = normalize_url(url)
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), skip_compatibility_check=True)
        before_optuna = storage.get_current_version()
        if before_optuna != storage.get_head_version():
            storage.upgrade()
            done.append(f"optuna tables: {before_optuna} -> {storage.get_current_version()}")
        storage.engine.dispose()
        before, after = upgrade(engine)
        if before is None:
            done.append(f"slimtune tables: created at version {after}")
        elif before != after:
            done.append(f"slimtune tables: version {before} -> {after}")
    finally:
        engine.dispose()
    return done
