"""SQLite is safe for one process: WAL, a busy timeout, and a second writing process refused
with a message that says to use PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from slimtune.storage import SQLiteBusy, connect, single_process
from slimtune.storage.database import SQLITE_BUSY_TIMEOUT_S


def test_a_writer_switches_the_file_to_wal_with_a_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    engine = connect(url)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == SQLITE_BUSY_TIMEOUT_S * 1000
    engine.dispose()


def test_a_second_process_is_refused_until_the_first_one_is_gone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom slimtune.storage.sqlite import single_process\n"
         f"with single_process({url!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SQLiteBusy) as caught:
            with single_process(url):
                pass
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and "postgresql+psycopg://" in message and "\n" not in message
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    with single_process(url):
        with pytest.raises(SQLiteBusy):  # a second holder in this process is refused too
            with single_process(url):
                pass
    with single_process(url):  # released on exit
        pass


def test_postgresql_and_memory_urls_take_no_lock() -> None:
    with single_process("postgresql+psycopg://u@127.0.0.1:1/x"), single_process("postgresql+psycopg://u@127.0.0.1:1/x"):
        pass
    with single_process("sqlite://"), single_process("sqlite://"):
        pass


@pytest.mark.processes
def test_run_on_a_file_another_process_writes_is_refused_and_creates_no_study(
    write_study, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import optuna

    from slimtune.search.cli import main

    url = f"sqlite:///{tmp_path / 'busy.db'}"
    with single_process(url):
        code = main(["run", str(write_study()), "--storage", url, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("slimtune: error: storage: ") and err.count("\n") == 1
    assert "in use by another slimtune process" in err and "PostgreSQL" in err
    assert optuna.get_all_study_names(url) == []


def test_launching_several_workers_on_sqlite_is_refused_at_once(
    write_study, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from slimtune.search.cli import main

    started = time.monotonic()
    code = main(["launch", str(write_study()), "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "SQLite holds one process at a time; several workers need PostgreSQL" in err
    assert not (tmp_path / "x.db").exists()
    assert time.monotonic() - started < 5
