"""Engines for any SQLAlchemy URL, with the settings many workers need, and Optuna's storage
built with the same settings."""

from __future__ import annotations

import os
from typing import Any

import optuna
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

DEFAULT_STORAGE = "sqlite:///slimtune.db"


class StorageError(RuntimeError):
    """The database cannot be used; the message is one line meant for the user."""


class DatabaseMissing(StorageError):
    """A reader asked for a SQLite file that does not exist."""


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def engine_kwargs(url: str) -> dict[str, Any]:
    """pool_pre_ping drops connections a server closed (Optuna sets it only for MySQL); a
    pinned UTC session time zone keeps heartbeat times comparable across PostgreSQL sessions."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "postgresql":
        kwargs["connect_args"] = {"options": "-c timezone=UTC"}
    return kwargs


def _sqlite_file(url: str) -> str | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def connect(url: str, *, must_exist: bool = False) -> Engine:
    """An engine whose database answered a query; raises `StorageError` otherwise.

    `must_exist` is for readers: SQLite would otherwise create an empty file for a mistyped path.
    """
    try:
        path = _sqlite_file(url)
    except ArgumentError as error:
        raise StorageError(f"storage: cannot use {safe_url(url)!r}: {error}") from None
    if must_exist and path is not None and not os.path.isfile(path):
        raise DatabaseMissing(f"storage: no database file at {path!r}")
    try:
        engine = create_engine(url, **engine_kwargs(url))
    except (ArgumentError, ImportError, ValueError) as error:
        raise StorageError(f"storage: cannot use {safe_url(url)!r}: {error}") from None
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        engine.dispose()
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise StorageError(f"storage: cannot connect to {safe_url(url)!r}: {reason}") from None
    return engine


def has_optuna_schema(engine: Engine) -> bool:
    return inspect(engine).has_table("studies")


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
    except RuntimeError as error:  # Optuna's schema is at another version
        raise StorageError(f"storage: {str(error).splitlines()[0]}") from None
