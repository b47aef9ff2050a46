"""SQLite holds one slimtune process at a time.

SQLite has no row locks: two workers on one file can pop the same waiting trial, and their
writes queue behind one file lock. A process that writes trials (`run`, `worker`) therefore
holds an exclusive `flock` on `<database>.lock` for as long as it runs; a second one is refused
with a message that says to use PostgreSQL. The kernel drops the lock when the process exits,
however it exits (SIGKILL included), so a dead process never blocks the next one. Readers
(reports) take no lock: WAL lets them read while the writer writes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from .database import StorageError, normalize_url, safe_url, sqlite_file

try:
    import fcntl
except ImportError:  # Windows: no flock; the guard is skipped
    fcntl = None  # type: ignore[assignment]

POSTGRES_HINT = "several workers need PostgreSQL: --storage postgresql+psycopg://user@host/db"


class SQLiteBusy(StorageError):
    """Another process is writing to this SQLite file."""


def lock_path(database: str) -> str:
    return f"{database}.lock"


@contextlib.contextmanager
def single_process(url: str) -> Iterator[None]:
    """Hold the SQLite file of `url` for this process; no-op for other databases."""
    path = sqlite_file(normalize_url(url))
    if path is None or fcntl is None:
        yield
        return
    descriptor = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise SQLiteBusy(
                f"storage: {safe_url(url)!r} is in use by another slimtune process{who}; SQLite holds one "
                f"process at a time, {POSTGRES_HINT}"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the flock
