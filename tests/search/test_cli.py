"""Bad input to the CLI: exit 2, one `slimtune: error:` line naming the field, and nothing created."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import torch
from sqlalchemy import update

from slimtune.search.cli import main
from slimtune.storage import Repository, connect
from slimtune.storage.schema import SchemaVersion

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/x"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from tmp_path, so that a stray default database (sqlite:///slimtune.db) would show up there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def storage(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "db" / "slimtune.db"
    path.parent.mkdir()
    return f"sqlite:///{path}", path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad_input(code: int, err: str, *parts: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("slimtune: error: "), lines[0]
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


def assert_nothing_created(tmp_path: Path, db: Path | None = None) -> None:
    if db is not None:
        assert not db.exists(), f"{db} was created"
    assert not (tmp_path / "slimtune.db").exists()


@pytest.mark.parametrize(
    "changes, parts",
    [
        pytest.param({"space": {"bogus_knob": [0.0, 1.0]}}, ["space.bogus_knob", "unknown field", "allowed: drop_layers, prune_ratio"],
                     id="unknown knob"),
        pytest.param({"space": {"prune_ratio": [0.0, 1.5]}}, ["space.prune_ratio", "[0.0, 0.9]"],
                     id="ratio out of range"),
        pytest.param({"workload": {"data": "torchvision:CIFAR10", "data_root": "empty_data", "input_shape": [3, 32, 32]}},
                     ["workload.data_root", "CIFAR10", "empty_data", "never downloads"], id="missing dataset"),
        pytest.param({"workload": {"data": "torchvision:CIFAR10", "data_root": "no_such_folder",
                                   "input_shape": [3, 32, 32]}},
                     ["workload.data_root", "no_such_folder", "not a folder"], id="missing data_root folder"),
        pytest.param({"workload": {"model": "no_such_pkg.mod:fn"}}, ["workload.model", "no_such_pkg"],
                     id="unimportable factory"),
        pytest.param({"workload": {"model": "slimtune:no_such_model"}}, ["workload.model", "small_cnn"],
                     id="unknown built-in model"),
        pytest.param({"workload": {"data": "sklearn:iris"}}, ["workload.data", "digits"], id="unknown dataset"),
        pytest.param({"workload": {"input_shape": [2, 8, 8]}}, ["workload.input_shape", "[1 or 3, H, W]"],
                     id="input shape that does not fit the data"),
    ],
)
def test_a_bad_study_or_workload_exits_2_and_creates_nothing(
    write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path,
    storage: tuple[str, Path], changes: dict[str, dict[str, Any]], parts: list[str],
) -> None:
    (tmp_path / "empty_data").mkdir()
    url, db = storage
    code, _, err = cli(capsys, "run", str(write_study(changes)), "--storage", url, "--no-progress")
    assert_bad_input(code, err, *parts)
    assert_nothing_created(tmp_path, db)


@pytest.mark.parametrize(
    "workload, parts",
    [
        pytest.param({"model": "tests.search.user_factories:raising_model"},
                     ["workload.model: the model factory 'tests.search.user_factories:raising_model' raised "
                      "RuntimeError: weights file models/best.pt is missing"], id="model factory raises"),
        pytest.param({"data": "tests.search.user_factories:data_on_an_unmounted_folder"},
                     ["workload.data: the data factory 'tests.search.user_factories:data_on_an_unmounted_folder' "
                      "raised FileNotFoundError: [Errno 2] No such file or directory: '/mnt/unmounted"],
                     id="data factory raises FileNotFoundError"),
    ],
)
def test_a_failing_factory_is_one_line_naming_it_and_nothing_is_written(
    write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path,
    storage: tuple[str, Path], workload: dict[str, str], parts: list[str],
) -> None:
    """The workload is loaded and its model run once in the worker before the database is
    touched (the other failing factories are in tests/objectives/test_workloads.py)."""
    url, db = storage
    code, _, err = cli(capsys, "run", str(write_study({"workload": workload})), "--storage", url, "--no-progress")
    assert_bad_input(code, err, *parts)
    assert_nothing_created(tmp_path, db)


def test_a_quantization_that_would_touch_no_layer_is_refused_at_start_up(
    write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, storage: tuple[str, Path],
) -> None:
    """SqueezeNet has no nn.Linear (its classifier is a convolution): int8_dynamic would quantize
    nothing and still name every trial that sampled it."""
    url, db = storage
    study = write_study({"workload": {"model": "torchvision:squeezenet1_1", "input_shape": [3, 32, 32]},
                         "space": {"quantization": ["none", "int8_weight_only", "int8_dynamic"]}})
    code, _, err = cli(capsys, "run", str(study), "--storage", url, "--no-progress")
    assert_bad_input(code, err, "space.quantization: 'int8_dynamic' would quantize no layer of this model "
                                "('int8_dynamic' quantizes nn.Linear only); the model has 26 Conv2d")
    assert_nothing_created(tmp_path, db)


def test_verbose_adds_the_factorys_own_traceback(
    write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, storage: tuple[str, Path],
) -> None:
    url, db = storage
    study = write_study({"workload": {"model": "tests.search.user_factories:raising_model"}})
    code, _, err = cli(capsys, "run", str(study), "--storage", url, "--no-progress", "--verbose")
    assert code == 2
    assert "Traceback (most recent call last):" in err
    assert 'user_factories.py", line' in err and "in raising_model" in err  # the user's own frame
    assert err.strip().splitlines()[-1].startswith("slimtune: error: workload.model: the model factory ")
    assert_nothing_created(tmp_path, db)


@pytest.mark.parametrize(
    "flags, parts",
    [(["--n-trials", "0"], ["study.n_trials = 0"]), (["--seed", "1", "--n-trials", "-3"], ["study.n_trials = -3"])],
)
def test_bad_flags_are_checked_like_the_study_file(
    write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path,
    storage: tuple[str, Path], flags: list[str], parts: list[str],
) -> None:
    url, db = storage
    code, _, err = cli(capsys, "run", str(write_study()), "--storage", url, "--no-progress", *flags)
    assert_bad_input(code, err, *parts)
    assert_nothing_created(tmp_path, db)


def test_a_missing_study_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      storage: tuple[str, Path]) -> None:
    url, db = storage
    code, _, err = cli(capsys, "run", str(tmp_path / "nowhere.toml"), "--storage", url)
    assert_bad_input(code, err, "nowhere.toml", "not found")
    assert_nothing_created(tmp_path, db)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_target_without_cuda_exits_2(write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path, storage: tuple[str, Path]) -> None:
    url, db = storage
    code, _, err = cli(capsys, "run", str(write_study({"target": {"device": "cuda"}})), "--storage", url)
    assert_bad_input(code, err, "target.device", "cuda", "allowed: cpu")
    assert_nothing_created(tmp_path, db)


def test_a_missing_checkpoint_exits_2_and_creates_nothing(
    write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, storage: tuple[str, Path],
) -> None:
    url, db = storage
    code, _, err = cli(capsys, "run", str(write_study({"baseline": {"checkpoint": "missing.pt"}})),
                       "--storage", url, "--no-progress")
    assert_bad_input(code, err, "baseline.checkpoint", "missing.pt")
    assert_nothing_created(tmp_path, db)


@pytest.mark.parametrize("password", [None, "pw-secret"])
def test_an_unreachable_database_exits_2(write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path, password: str | None) -> None:
    pytest.importorskip("psycopg", reason="psycopg (3) is not installed")
    url = UNREACHABLE.replace("postgres@", f"postgres:{password}@") if password else UNREACHABLE
    code, _, err = cli(capsys, "run", str(write_study()), "--storage", url, "--no-progress")
    line = assert_bad_input(code, err, "storage", "127.0.0.1:1", "cannot connect")
    assert "pw-secret" not in line
    assert_nothing_created(tmp_path)


def test_a_database_with_slimtune_tables_at_another_version_exits_2_without_a_study(
    write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str], storage: tuple[str, Path],
) -> None:
    url, _ = storage
    engine = connect(url)
    Repository(engine).create_schema()
    with engine.begin() as connection:
        connection.execute(update(SchemaVersion).values(version=99))
    engine.dispose()

    code, _, err = cli(capsys, "run", str(write_study()), "--storage", url, "--no-progress")
    # This error comes after the capability probe, whose first import of torchao may log a
    # torch warning on stderr; slimtune's own part is still exactly one line.
    errors = [line for line in err.splitlines() if line.startswith("slimtune:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert_bad_input(code, errors[0], "storage", "version", "99")
    assert optuna.get_all_study_names(url) == []


@pytest.mark.parametrize("command", ["pareto", "trials"])
def test_reports_of_an_unknown_study_exit_2(capsys: pytest.CaptureFixture[str], storage: tuple[str, Path],
                                            command: str) -> None:
    url, _ = storage
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.create_study(study_name="another-study", storage=url)
    code, out, err = cli(capsys, command, "no-such-study", "--storage", url)
    assert_bad_input(code, err, "'no-such-study'", "not found", url)
    assert out == ""
    assert optuna.get_all_study_names(url) == ["another-study"]


@pytest.mark.parametrize("command", ["pareto", "trials"])
def test_reports_from_an_unreachable_database_exit_2(capsys: pytest.CaptureFixture[str], command: str) -> None:
    pytest.importorskip("psycopg", reason="psycopg (3) is not installed")
    code, _, err = cli(capsys, command, "tiny", "--storage", UNREACHABLE, "--format", "json")
    assert_bad_input(code, err, "storage", "127.0.0.1:1")


def test_a_report_from_a_database_that_does_not_exist_creates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, storage: tuple[str, Path],
) -> None:
    url, db = storage
    code, _, err = cli(capsys, "pareto", "tiny", "--storage", url)
    assert_bad_input(code, err, "'tiny'", "not found")
    assert_nothing_created(tmp_path, db)


def test_the_installed_console_script_reports_bad_input_in_one_line(
    write_study: Callable[..., Path], tmp_path: Path, storage: tuple[str, Path],
) -> None:
    script = Path(sys.executable).with_name("slimtune")
    if not script.exists():
        found = shutil.which("slimtune")
        if found is None:
            pytest.skip("the slimtune console script is not installed (pip install -e .)")
        script = Path(found)
    url, db = storage
    result = subprocess.run(
        [str(script), "run", str(write_study({"space": {"bogus_knob": [0.0, 1.0]}})), "--storage", url],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ}, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert_bad_input(result.returncode, result.stderr, "space.bogus_knob", "unknown field")
    assert_nothing_created(tmp_path, db)
