"""A throwaway PostgreSQL database for tests that need the server.

Each use creates a uniquely named database `slimtune_test_<random>` through an AUTOCOMMIT
connection to the server's `postgres` database and drops it afterwards, so a test leaves no
tables behind whether it runs alone or in a full run. When the server cannot be reached the
test is skipped with the reason, unless `SLIMTUNE_REQUIRE_POSTGRES=1` (set by `.ci/run`): then
it fails, so CI never passes by skipping the PostgreSQL tests.

The server is `SLIMTUNE_TEST_POSTGRES_ADMIN_URL` when set, else the local trust-auth one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

import pytest

ADMIN_URL = os.environ.get(
    "SLIMTUNE_TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def require_postgres() -> bool:
    return os.environ.get("SLIMTUNE_REQUIRE_POSTGRES") == "1"


def skip_or_fail(reason: str) -> None:
    if require_postgres():
        pytest.fail(f"SLIMTUNE_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def need_driver() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        skip_or_fail("psycopg (3) is not installed: PostgreSQL tests need it (pip install -e '.[test]')")


@contextlib.contextmanager
def temporary_database() -> Iterator[str]:
    """Yield the URL of a fresh, empty database on the server; drop it on exit."""
    need_driver()
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    admin_url = make_url(ADMIN_URL)
    admin = create_engine(
        admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 5}
    )
    name = f"slimtune_test_{uuid.uuid4().hex[:16]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except SQLAlchemyError as error:
        admin.dispose()
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        skip_or_fail(
            f"PostgreSQL server {admin_url.render_as_string(hide_password=True)} is unreachable "
            f"or refuses CREATE DATABASE: {reason}"
        )
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            # Engines the test left open (slimtune's, Optuna's) still hold sessions: end them.
            if connection.dialect.server_version_info >= (13,):
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            else:
                connection.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = :name AND pid <> pg_backend_pid()"),
                    {"name": name},
                )
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
