"""Real studies through the CLI: what a run leaves in Optuna's and slimtune's tables, the reports,
resuming, a changed configuration, a failing trial, and PostgreSQL.

One 4-trial study (the `write_study` defaults) runs once for the module; most tests only read it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import pandas as pd
import pytest
from optuna.trial import FrozenTrial, TrialState

from slimtune.search import StudyFileError
from slimtune.search import pareto as api_pareto
from slimtune.search import run as api_run
from slimtune.search import trials as api_trials
from slimtune.search.cli import main
from slimtune.search.hypervolume import HYPERVOLUME_ATTR, hypervolume_line, study_hypervolume
from slimtune.spaces import Recipe
from slimtune.storage import Repository, connect
from tests.conftest import TINY_STUDY, toml_value
from tests.storage.postgres import temporary_database

pytestmark = pytest.mark.processes  # starts real slimtune processes: scheduled first (tests/conftest.py)

NAME = TINY_STUDY["study"]["name"]
MAX_DROP = TINY_STUDY["constraints"]["max_accuracy_drop"]
PARETO_COLUMNS = ["trial", "recipe", "latency_ms", "latency_p95_ms", "peak_memory_mb", "weight_mb", "accuracy",
                  "balanced_accuracy", "speedup_x", "memory_x", "accuracy_drop_pts", "accuracy_drop_ci_low_pts",
                  "accuracy_drop_ci_high_pts", "judged_on", "test_accuracy", "test_balanced_accuracy", "test_accuracy_drop_pts",
                  "test_accuracy_drop_ci_low_pts", "test_accuracy_drop_ci_high_pts", "test_balanced_accuracy_drop_pts",
                  "test_balanced_accuracy_drop_ci_low_pts", "test_balanced_accuracy_drop_ci_high_pts", "latency_ci_low_ms", "latency_ci_high_ms",
                  "latency_repeats", "speedup_ci_low_x", "speedup_ci_high_x", "confirmed", "flagged"]
#: the terminal table folds each interval into one 'low-high' column beside its figure
PARETO_TABLE_COLUMNS = ["trial", "recipe", "latency_ms", "latency_ci_ms", "latency_p95_ms", "peak_memory_mb",
                        "weight_mb", "val_accuracy", "balanced_accuracy", "speedup_x", "speedup_ci_x", "memory_x",
                        "val_drop_pts", "test_accuracy", "test_drop_pts", "confirmed"]
TRIALS_COLUMNS = {"trial", "state", "status", "reason", "recipe.prune_ratio", "recipe.quantization",
                  "recipe.precision", "accuracy", "latency_ms", "peak_memory_mb", "accuracy_drop", "on_front"}


def study_text(changes: dict[str, dict[str, Any]] | None = None) -> str:
    """The `write_study` file, for fixtures wider than one test."""
    sections = {k: dict(v) for k, v in TINY_STUDY.items()}
    for section, fields in (changes or {}).items():
        for key, value in fields.items():
            if value is None:
                sections.setdefault(section, {}).pop(key, None)
            else:
                sections.setdefault(section, {})[key] = value
    return "\n".join(
        f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items())
        for section, fields in sections.items()
    )


def copy_sqlite(source: str | Path, target: str | Path) -> None:
    """A consistent copy of a SQLite database in WAL mode (the file alone may miss the latest
    commits, which live in its -wal file until a checkpoint)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@dataclass
class Run:
    study_file: Path
    url: str
    code: int
    out: str
    err: str

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=NAME, storage=self.url)

    def repository(self) -> Repository:
        return Repository(connect(self.url))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("end-to-end")
    study_file = folder / "study.toml"
    study_file.write_text(study_text())
    url = f"sqlite:///{folder / 'e2e.db'}"
    return Run(study_file, url, *run_cli("run", str(study_file), "--storage", url, "--no-progress"))


def by_state(study: optuna.Study, state: TrialState) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(state,))


def test_run_exits_0_and_prints_the_pareto_table(finished: Run) -> None:
    assert finished.code == 0, finished.err
    assert finished.out.startswith("baseline: ")
    assert f"Pareto front of {NAME!r}: " in finished.out
    assert "4 trials" in finished.out
    table = finished.out.split(f"Pareto front of {NAME!r}: ")[1].splitlines()
    header = table[1].split()
    assert header == PARETO_TABLE_COLUMNS
    assert len(table) - 3 == len(finished.study().best_trials) >= 1  # title, header, rows, hypervolume
    assert table[-1].startswith("hypervolume ")


def test_the_study_has_the_requested_trials_and_objectives(finished: Run) -> None:
    study = finished.study()
    assert optuna.get_all_study_names(finished.url) == [NAME]
    assert len(study.trials) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in study.trials)
    assert study.metric_names == ["latency_ms", "peak_memory_mb", "accuracy"]
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MINIMIZE,
                                optuna.study.StudyDirection.MAXIMIZE]


def test_trial_0_is_the_unmodified_baseline(finished: Run) -> None:
    study = finished.study()
    first = study.trials[0]
    assert first.state == TrialState.COMPLETE
    assert first.user_attrs["baseline"] is True
    assert Recipe.from_dict(first.user_attrs["recipe"]) == Recipe()
    assert first.params == {"prune_ratio": 0.0, "quantization": "none"}
    assert first.user_attrs["accuracy_drop"] == pytest.approx(0.0, abs=1e-12)
    assert [t.number for t in study.trials if t.user_attrs.get("baseline")] == [0]

    record = finished.repository().trials(NAME)[0]
    assert (record.trial_number, record.status) == (0, "complete")
    assert Recipe.from_dict(record.recipe).is_baseline and record.recipe == Recipe().to_dict()


def test_every_complete_trial_carries_the_accuracy_drop_constraint(finished: Run) -> None:
    complete = by_state(finished.study(), TrialState.COMPLETE)
    assert complete
    for trial in complete:
        assert "constraints:accuracy_drop" in trial.system_attrs
        assert trial.constraints == {"accuracy_drop": pytest.approx(trial.user_attrs["accuracy_drop"] - MAX_DROP)}


def test_slimtune_rows_exist_for_every_finished_trial(finished: Run) -> None:
    study = finished.study()
    repository = finished.repository()
    records = {r.trial_number: r for r in repository.trials(NAME)}
    assert set(records) == {t.number for t in study.trials}
    for trial in study.trials:
        record = records[trial.number]
        assert record.recipe == trial.user_attrs["recipe"]
        if trial.state == TrialState.COMPLETE:
            assert record.status == "complete" and record.reason is None
            measurement = record.measurement
            assert trial.values == pytest.approx(
                [measurement["latency_ms"], measurement["peak_memory_mb"], measurement["accuracy"]]
            )
            assert record.accuracy_drop == pytest.approx(trial.user_attrs["accuracy_drop"])
            assert measurement["params"] > 0 and measurement["batch_size"] == 32
        else:  # failed or stopped early: still a row, with the reason
            assert trial.state == TrialState.FAIL
            assert record.status in ("failed", "stopped")
            assert record.reason and record.reason == trial.user_attrs["reason"]
            assert record.measurement is None
            assert f"trial {trial.number} {record.status}: " in finished.out
    [fingerprint] = repository.fingerprints(NAME)
    assert (fingerprint.device, fingerprint.threads) == ("cpu", 2)


def test_a_pareto_snapshot_follows_each_complete_trial(finished: Run) -> None:
    study = finished.study()
    complete = {t.number: t for t in by_state(study, TrialState.COMPLETE)}
    snapshots = finished.repository().snapshots(NAME)
    assert [s.after_trial_number for s in snapshots] == sorted(complete)
    for snapshot in snapshots:
        members = [point["trial_number"] for point in snapshot.front]
        assert snapshot.size == len(members) >= 1
        assert set(members) <= {n for n in complete if n <= snapshot.after_trial_number}
        for point in snapshot.front:
            trial = complete[point["trial_number"]]
            assert point["values"] == pytest.approx(trial.values)
            assert trial.user_attrs["accuracy_drop"] <= MAX_DROP  # only feasible trials make the front
    assert {p["trial_number"] for p in snapshots[-1].front} == {t.number for t in study.best_trials}
    # the hypervolume of each front, from the baseline on: a growing front never loses volume
    volumes = [s.hypervolume for s in snapshots]
    assert all(v is not None and v > 0 for v in volumes) and volumes == sorted(volumes)
    assert volumes[-1] == pytest.approx(study_hypervolume(study))
    assert study.user_attrs[HYPERVOLUME_ATTR]["axes"][2] == {
        "name": "accuracy", "direction": "maximize", "scale": MAX_DROP, "reference": 1.0}
    assert study.user_attrs[HYPERVOLUME_ATTR]["rule"] == "halvings"


def test_pareto_as_json_and_csv(finished: Run) -> None:
    best = {t.number for t in finished.study().best_trials}
    code, out, err = run_cli("pareto", NAME, "--storage", finished.url, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [list(row) for row in rows] == [PARETO_COLUMNS] * len(rows)
    assert {row["trial"] for row in rows} == best
    latencies = [row["latency_ms"] for row in rows]
    assert latencies == sorted(latencies)
    for row in rows:
        assert row["speedup_x"] > 0 and row["memory_x"] > 0
        assert row["accuracy_drop_pts"] <= 100 * MAX_DROP + 1e-9
        # judged on validation with its interval; measured once on the test split when the run ended
        assert row["judged_on"] == "validation"
        assert row["accuracy_drop_ci_low_pts"] <= row["accuracy_drop_pts"] <= row["accuracy_drop_ci_high_pts"]
        assert row["test_accuracy"] is not None
        assert row["test_accuracy_drop_ci_low_pts"] <= row["test_accuracy_drop_pts"] <= row["test_accuracy_drop_ci_high_pts"]

    code, out, err = run_cli("pareto", NAME, "--storage", finished.url, "--format", "csv")
    assert code == 0, err
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == PARETO_COLUMNS
    assert [int(row["trial"]) for row in reader] == [row["trial"] for row in rows]

    code, out, err = run_cli("pareto", NAME, "--storage", finished.url)
    assert code == 0, err
    assert out.splitlines()[0].split() == PARETO_TABLE_COLUMNS
    assert out.splitlines()[-1] == hypervolume_line(finished.study())
    assert out.splitlines()[-1].startswith(f"hypervolume {study_hypervolume(finished.study()):.4f} ")
    assert finished.out.splitlines()[-1] == out.splitlines()[-1]  # `run` ends with it too


def test_a_study_is_named_by_its_study_file_too(finished: Run, tmp_path: Path) -> None:
    """After `slimtune run studies/x.toml`, the commands that read a study take the same path."""
    by_name = run_cli("pareto", NAME, "--storage", finished.url, "--format", "json")
    by_file = run_cli("pareto", str(finished.study_file), "--storage", finished.url, "--format", "json")
    assert by_file == by_name and by_file[0] == 0
    code, out, err = run_cli("trials", str(tmp_path / "missing.toml"), "--storage", finished.url)
    assert code == 2 and out == "" and err == f"slimtune: error: {tmp_path / 'missing.toml'}: study file not found\n"


def test_trials_as_json_and_csv(finished: Run) -> None:
    study = finished.study()
    code, out, err = run_cli("trials", NAME, "--storage", finished.url, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [row["trial"] for row in rows] == [t.number for t in study.trials]
    assert [row["state"] for row in rows] == [t.state.name for t in study.trials]
    assert all(TRIALS_COLUMNS <= set(row) for row in rows)
    best = {t.number for t in study.best_trials}
    assert {row["trial"] for row in rows if row["on_front"]} == best

    code, out, err = run_cli("trials", NAME, "--storage", finished.url, "--format", "csv")
    assert code == 0, err
    reader = csv.DictReader(io.StringIO(out))
    assert TRIALS_COLUMNS <= set(reader.fieldnames or [])
    assert [(int(r["trial"]), r["state"]) for r in reader] == [(t.number, t.state.name) for t in study.trials]

    code, out, err = run_cli("trials", NAME, "--storage", finished.url)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 + len(study.trials)


def test_the_python_api_returns_dataframes(finished: Run) -> None:
    study = finished.study()
    frame = api_trials(NAME, finished.url)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["trial"]) == [t.number for t in study.trials]
    assert TRIALS_COLUMNS <= set(frame.columns)
    assert frame.loc[0, "status"] == "complete" and frame.loc[0, "recipe.prune_ratio"] == 0.0

    front = api_pareto(NAME, finished.url)
    assert isinstance(front, pd.DataFrame)
    assert list(front.columns) == PARETO_COLUMNS
    assert set(front["trial"]) == {t.number for t in study.best_trials}


def test_the_same_command_with_more_trials_resumes(finished: Run, tmp_path: Path) -> None:
    db = tmp_path / "resumed.db"
    copy_sqlite(finished.url.removeprefix("sqlite:///"), db)  # the module's study stays as it was
    url = f"sqlite:///{db}"
    before = optuna.load_study(study_name=NAME, storage=url).trials

    code, out, err = run_cli("run", str(finished.study_file), "--storage", url, "--no-progress", "--n-trials", "5")
    assert code == 0, err
    assert out.startswith("baseline: cache:")  # the baseline is not trained again
    assert "5 trials" in out
    assert optuna.get_all_study_names(url) == [NAME]
    study = optuna.load_study(study_name=NAME, storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL))) == len(study.trials) == 5
    assert [(t.number, t.params, t.state) for t in study.trials[:4]] == [(t.number, t.params, t.state) for t in before]
    assert [t.number for t in study.trials if t.user_attrs.get("baseline")] == [0]

    repository = Repository(connect(url))
    assert [r.trial_number for r in repository.trials(NAME)] == [0, 1, 2, 3, 4]
    assert len(repository.fingerprints(NAME)) == 2
    complete = [t.number for t in study.trials if t.state == TrialState.COMPLETE]
    assert [s.after_trial_number for s in repository.snapshots(NAME)] == complete

    # Run once more: the study already has its 5 trials, and nothing is added.
    code, out, err = run_cli("run", str(finished.study_file), "--storage", url, "--no-progress", "--n-trials", "5")
    assert code == 0, err
    assert "already has 5 finished trials" in out
    assert len(optuna.load_study(study_name=NAME, storage=url).trials) == 5


def test_a_changed_configuration_under_the_same_name_exits_2(finished: Run, tmp_path: Path) -> None:
    changed = tmp_path / "changed.toml"
    changed.write_text(study_text({"space": {"prune_ratio": [0.0, 0.3]}}))
    code, out, err = run_cli("run", str(changed), "--storage", finished.url, "--no-progress")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimtune: error: "), err
    assert "study.name" in lines[0] and repr(NAME) in lines[0]
    assert "different [space]" in lines[0]
    # The Python API refuses it the same way.
    with pytest.raises(StudyFileError, match=r"different \[space\]"):
        api_run(str(changed), finished.url)
    assert len(finished.study().trials) == 4
    assert len(finished.repository().trials(NAME)) == 4


def test_plot_writes_an_html_figure(finished: Run, tmp_path: Path) -> None:
    out_file = tmp_path / "front.html"
    code, out, err = run_cli("plot", NAME, "--storage", finished.url, "--out", str(out_file))
    assert code == 0, err
    assert out.strip() == f"wrote {out_file}"
    html = out_file.read_text()
    assert "feasible Pareto front" in html and "baseline" in html
    assert "hypervolume of the feasible front" in html

    code, out, err = run_cli("plot", "no-such-study", "--storage", finished.url, "--out", str(tmp_path / "x.html"))
    assert code == 2 and err.startswith("slimtune: error: ") and "'no-such-study'" in err
    assert not (tmp_path / "x.html").exists()


NO_BF16_MODEL = textwrap.dedent('''
    """A user model factory whose forward has no bf16 path, like a model with a custom kernel."""
    import torch
    from torch import nn

    from slimtune.objectives.models import small_cnn


    class NoBF16(nn.Module):
        def __init__(self, num_classes, input_shape):
            super().__init__()
            self.net = small_cnn(num_classes, input_shape, width=16)

        def forward(self, x):
            if x.dtype == torch.bfloat16:
                raise RuntimeError("this model has no bf16 kernels")
            return self.net(x)


    def build(num_classes, input_shape):
        return NoBF16(num_classes, input_shape)
''')


def test_a_failing_trial_is_recorded_and_the_study_goes_on(
    write_study: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    (tmp_path / "slimtune_test_no_bf16_model.py").write_text(NO_BF16_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_study({
        "study": {"name": "no-bf16"},
        "workload": {"model": "slimtune_test_no_bf16_model:build"},
        "baseline": {"epochs": 1},
        "space": {"prune_ratio": [], "kd_temperature": [], "quantization": ["none"], "precision": ["fp32", "bf16"]},
    })
    url = f"sqlite:///{tmp_path / 'bf16.db'}"
    code, out, err = run_cli("run", str(path), "--storage", url, "--no-progress")
    assert code == 0, err

    study = optuna.load_study(study_name="no-bf16", storage=url)
    assert len(study.trials) == 4
    failed = by_state(study, TrialState.FAIL)
    assert failed, "the seeded sampler should have tried bf16"  # seed 0: trials 1 and 3
    reason = "RuntimeError: this model has no bf16 kernels"
    records = {r.trial_number: r for r in Repository(connect(url)).trials("no-bf16")}
    assert set(records) == {0, 1, 2, 3}
    # the first bf16 trial fails for its reason; later ones fail at once with it, as a
    # known-bad combination (it failed on the unpruned model, so no prune ratio helps)
    known_bad = ("known-bad combination (quantization=none, precision=bf16, memory_format=contiguous, "
                 f"runtime=eager): {reason}")
    for index, trial in enumerate(failed):
        expected = reason if index == 0 else known_bad
        assert trial.params["precision"] == "bf16"
        assert trial.user_attrs["status"] == "failed" and trial.user_attrs["reason"] == expected
        record = records[trial.number]
        assert (record.status, record.reason, record.measurement) == ("failed", expected, None)
        assert record.recipe["precision"] == "bf16"
        assert f"trial {trial.number} failed: {expected}" in out
    complete = by_state(study, TrialState.COMPLETE)
    assert all(t.params["precision"] == "fp32" for t in complete)
    assert any(t.number > failed[0].number for t in complete), "no trial ran after the failure"
    assert all(records[t.number].status == "complete" for t in complete)
    snapshots = Repository(connect(url)).snapshots("no-bf16")
    assert [s.after_trial_number for s in snapshots] == [t.number for t in complete]

    frame = api_trials("no-bf16", url)
    failed_rows = frame[frame["state"] == "FAIL"]
    assert list(failed_rows["trial"]) == [t.number for t in failed]
    assert set(failed_rows["status"]) == {"failed"} and set(failed_rows["reason"]) <= {reason, known_bad}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with temporary_database() as url:
        yield url


def test_a_short_study_on_postgresql(write_study: Callable[..., Path], postgres_url: str) -> None:
    path = write_study({"study": {"name": "tiny-pg", "n_trials": 2}})
    code, out, err = run_cli("run", str(path), "--storage", postgres_url, "--no-progress")
    assert code == 0, err
    assert "Pareto front of 'tiny-pg'" in out

    assert optuna.get_all_study_names(postgres_url) == ["tiny-pg"]
    study = optuna.load_study(study_name="tiny-pg", storage=postgres_url)
    assert len(study.trials) == 2 and study.trials[0].user_attrs["baseline"] is True
    repository = Repository(connect(postgres_url))
    try:
        records = repository.trials("tiny-pg")
        assert [r.trial_number for r in records] == [0, 1]
        assert records[0].status == "complete" and records[0].recipe == Recipe().to_dict()
        complete = [t.number for t in study.trials if t.state == TrialState.COMPLETE]
        assert [s.after_trial_number for s in repository.snapshots("tiny-pg")] == complete
        assert len(repository.fingerprints("tiny-pg")) == 1
    finally:
        repository.engine.dispose()

    code, out, err = run_cli("pareto", "tiny-pg", "--storage", postgres_url, "--format", "json")
    assert code == 0, err
    assert {row["trial"] for row in json.loads(out)} == {t.number for t in study.best_trials}
    assert len(api_trials("tiny-pg", postgres_url)) == 2
