"""Clear errors from `worker`, `launch` and the storage URL: one `slimtune: error:` line, exit 2,
nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import optuna
import pytest
from sqlalchemy import inspect, update
from sqlalchemy.engine import make_url

from slimtune.storage import Repository, connect, normalize_url
from slimtune.storage.schema import SCHEMA_VERSION, SchemaVersion

from tests.storage.postgres import need_driver, temporary_database
from tests.search.test_cli import assert_bad_input, cli


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with temporary_database() as url:
        yield url


def no_tables(url: str) -> bool:
    engine = connect(url)
    try:
        return inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_wrong_credentials_exit_2_and_write_nothing(write_study: Callable[..., Path], capsys, postgres_url: str) -> None:
    wrong = make_url(postgres_url).set(username="no_such_role", password="pw-secret").render_as_string(False)
    for argv in (["run", str(write_study()), "--storage", wrong, "--no-progress"],
                 ["worker", "tiny", "--storage", wrong],
                 ["launch", str(write_study()), "--storage", wrong, "--workers", "2"]):
        code, _, err = cli(capsys, *argv)
        line = assert_bad_input(code, err, "storage", "cannot connect", "no_such_role")
        assert "pw-secret" not in line
    assert no_tables(postgres_url)


@pytest.mark.parametrize("url, parts", [
    ("postgresql+psycopg://u:pw-secret@127.0.0.1:notaport/db", ["cannot use", "notaport", "u:***@"]),
    ("not a url", ["cannot use", "'not a url'"]),
    ("postgresql+nosuchdriver://u@127.0.0.1/db", ["cannot use", "slimtune[postgres]"]),
])
@pytest.mark.parametrize("command", ["run", "worker", "launch"])
def test_a_malformed_url_exits_2(write_study: Callable[..., Path], capsys, tmp_path: Path, url: str,
                                 parts: list[str], command: str) -> None:
    argv = {"run": ["run", str(write_study()), "--no-progress"], "worker": ["worker", "tiny"],
            "launch": ["launch", str(write_study()), "--workers", "2"]}[command]
    code, _, err = cli(capsys, *argv, "--storage", url)
    assert "pw-secret" not in assert_bad_input(code, err, "storage", *parts)
    assert list(tmp_path.glob("*.db")) == []


def test_worker_for_a_study_that_does_not_exist_exits_2(capsys, tmp_path: Path, postgres_url: str) -> None:
    missing_file = f"sqlite:///{tmp_path / 'nowhere.db'}"
    code, _, err = cli(capsys, "worker", "tiny", "--storage", missing_file)
    assert_bad_input(code, err, "'tiny'", "not found")
    assert not (tmp_path / "nowhere.db").exists()

    code, _, err = cli(capsys, "worker", "tiny", "--storage", postgres_url)  # an empty database
    assert_bad_input(code, err, "'tiny'", "not found", "holds no studies")
    assert no_tables(postgres_url)

    optuna.create_study(study_name="another", storage=normalize_url(postgres_url))
    code, _, err = cli(capsys, "worker", "tiny", "--storage", postgres_url)
    assert_bad_input(code, err, "'tiny'", "not found")
    assert optuna.get_all_study_names(normalize_url(postgres_url)) == ["another"]


def test_worker_on_a_study_without_a_stored_study_file_says_how_to_store_it(capsys, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = connect(url)
    Repository(engine).create_schema()
    engine.dispose()
    optuna.create_study(study_name="tiny", storage=url)
    code, _, err = cli(capsys, "worker", "tiny", "--storage", url)
    assert_bad_input(code, err, "'tiny'", "older slimtune", "slimtune run FILE --storage URL")


def test_worker_on_a_newer_schema_exits_2(write_study: Callable[..., Path], capsys, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = connect(url)
    Repository(engine).create_schema()
    with engine.begin() as connection:
        connection.execute(update(SchemaVersion).values(version=SCHEMA_VERSION + 1))
    engine.dispose()
    optuna.create_study(study_name="tiny", storage=url)
    code, _, err = cli(capsys, "worker", "tiny", "--storage", url)
    assert_bad_input(code, err, "storage", "newer than this slimtune", "upgrade slimtune")


@pytest.mark.parametrize("flags, parts", [
    (["--workers", "0"], ["--workers = 0", "at least 1"]),
    (["--workers", "3", "--gpus", "0,1"], ["--workers = 3", "2 GPUs"]),
    (["--workers", "1", "--gpus", "0,"], ["--gpus", "comma-separated"]),
])
def test_bad_launch_flags_exit_2(write_study: Callable[..., Path], capsys, tmp_path: Path, flags, parts) -> None:
    code, _, err = cli(capsys, "launch", str(write_study()), "--storage", f"sqlite:///{tmp_path / 'l.db'}", *flags)
    assert_bad_input(code, err, *parts)
    assert not (tmp_path / "l.db").exists()


def test_gpus_for_a_cpu_study_exit_2_before_any_worker_starts(write_study, capsys, tmp_path: Path) -> None:
    code, out, err = cli(capsys, "launch", str(write_study()), "--storage", f"sqlite:///{tmp_path / 'g.db'}",
                         "--workers", "1", "--gpus", "0")
    assert_bad_input(code, err, "--gpus", "target.device = 'cpu'", "cuda")
    assert out == "" and not (tmp_path / "g.db").exists()


def test_a_plain_postgresql_url_uses_psycopg_3(postgres_url: str) -> None:
    need_driver()
    plain = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    assert normalize_url(plain).startswith("postgresql+psycopg://")
    assert normalize_url(plain.replace("postgresql://", "postgres://", 1)).startswith("postgresql+psycopg://")
    assert normalize_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"  # as written
    engine = connect(plain)
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


def test_a_worker_may_change_the_device_index_but_not_its_type(write_study) -> None:
    from slimtune.search.commands import override_device
    from slimtune.search.config import StudyFileError, load_config

    cuda = load_config(write_study({"target": {"device": "cuda:0"}}))
    assert override_device(cuda, "cuda:1").target.device == "cuda:1"
    assert override_device(cuda, "cuda").target.device == "cuda"
    with pytest.raises(StudyFileError, match="--device = 'cpu': the study measures on 'cuda:0'"):
        override_device(cuda, "cpu")
    with pytest.raises(StudyFileError, match="--device"):
        override_device(cuda, "cuda:x")
