"""Engines for any SQLAlchemy URL, with the settings many workers need, and Optuna's storage
built with the same settings.

PostgreSQL goes through psycopg 3 (the `postgres` extra): `postgresql://` and `postgres://`
URLs are read as `postgresql+psycopg://` when it is installed; a URL naming another driver
(`postgresql+psycopg2://`) is used as written. SQLite runs in WAL mode with a busy timeout, so
readers (reports, the dashboard) never block the one process that writes.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from typing import Any, Callable

import optuna
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, ProgrammingError, SQLAlchemyError

DEFAULT_STORAGE = "sqlite:///slimtune.db"


class StorageError(RuntimeError):
    """The database cannot be used; the message is one line meant for the user."""


class DatabaseMissing(StorageError):
    """A reader asked for a SQLite file that does not exist."""


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # unparsable: hide what looks like user:password@
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


#: seconds a SQLite connection waits for a lock before "database is locked"
SQLITE_BUSY_TIMEOUT_S = 30
#: seconds to wait for a PostgreSQL server before calling it unreachable
CONNECT_TIMEOUT_S = 10
#: tries at creating Optuna's tables when another process creates them at the same moment
SCHEMA_ATTEMPTS = 5


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 when it is installed (SQLAlchemy's own
    default is psycopg2, which the `postgres` extra no longer installs)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url  # `connect` reports it
    if parsed.drivername in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is not None:
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if parsed.drivername == "postgres":  # SQLAlchemy 2 knows only `postgresql`
        return parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    return url


def engine_kwargs(url: str) -> dict[str, Any]:
    """pool_pre_ping drops connections a server closed (Optuna sets it only for MySQL); a
    pinned UTC session time zone keeps heartbeat times comparable across PostgreSQL sessions;
    SQLite waits for a lock instead of failing at once."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "postgresql":
        kwargs["connect_args"] = {"options": "-c timezone=UTC", "connect_timeout": CONNECT_TIMEOUT_S}
    return kwargs


def is_sqlite(url: str) -> bool:
    try:
        return make_url(url).get_backend_name() == "sqlite"
    except (ArgumentError, ValueError):
        return False


def sqlite_file(url: str) -> str | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def _first_line(error: BaseException) -> str:
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _bad_url(url: str, error: BaseException) -> StorageError:
    if isinstance(error, ImportError) or "Can't load plugin" in str(error):
        hint = " (for PostgreSQL: pip install 'slimtune[postgres]' and use postgresql+psycopg://user@host/db)"
        return StorageError(f"storage: cannot use {safe_url(url)!r}: {_first_line(error)}{hint}")
    return StorageError(f"storage: cannot use {safe_url(url)!r}: {_first_line(error)}")


def connect(url: str, *, must_exist: bool = False) -> Engine:
    """An engine whose database answered a query; raises `StorageError` otherwise.

    `must_exist` is for readers: SQLite would otherwise create an empty file for a mistyped
    path. Writers (`must_exist=False`) switch a SQLite file to WAL, which the file remembers.
    """
    url = normalize_url(url)
    try:
        path = sqlite_file(url)
    except (ArgumentError, ValueError) as error:
        raise _bad_url(url, error) from None
    if must_exist and path is not None and not os.path.isfile(path):
        raise DatabaseMissing(f"storage: no database file at {path!r}")
    try:
        engine = create_engine(url, **engine_kwargs(url))
    except (ArgumentError, ImportError, ValueError, TypeError) as error:
        raise _bad_url(url, error) from None
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            if path is not None and not must_exist:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    except SQLAlchemyError as error:
        engine.dispose()
        raise StorageError(f"storage: cannot connect to {safe_url(url)!r}: {_first_line(error)}") from None
    return engine


def has_optuna_schema(engine: Engine) -> bool:
    return inspect(engine).has_table("studies")


def optuna_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.RDBStorage:
    """Optuna's storage on `url`; with `heartbeat_interval`, running trials send heartbeats and
    a trial silent for `grace_period` seconds is failed (and handed to `stale_trial_callback`)."""
    url = normalize_url(url)
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs(url), heartbeat_interval=heartbeat_interval,
                grace_period=grace_period, heartbeat_stale_trial_callback=stale_trial_callback,
            )
        except RuntimeError as error:  # Optuna's schema is at another version
            raise StorageError(f"storage: {str(error).splitlines()[0]}") from None
        except (IntegrityError, ProgrammingError):
            # Two processes creating Optuna's tables at once on an empty PostgreSQL database
            # collide in the catalog (pg_type, pg_class); the loser finds the tables next time.
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
