"""Balanced accuracy as a constrained objective, and `slimtune refine` end to end on the tiny
digits study: refined records stored and linked to their trials, shown beside the short figures
in `pareto`, the report and the dashboard's read model, exported with `--refined`; the study
file's `[refine]` runs after the search; a study without refined records reads as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimtune.search.config import TEST_ATTR
from slimtune.search.cli import main
from slimtune.search.report.overview import Catalog
from slimtune.search.results import open_study, pareto_front
from slimtune.spaces import Recipe

MAX_BALANCED_DROP = 0.05
STEPS = 40


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[str, Path, Path]:
    """Three trials under a balanced-accuracy constraint, not yet refined."""
    from tests.conftest import TINY_STUDY, toml_value

    folder = tmp_path_factory.mktemp("refine-study")
    sections = {k: dict(v) for k, v in TINY_STUDY.items()}
    sections["study"].update(n_trials=3)
    # weight_mb too: a pruned point has fewer weights than the baseline, so it is on the front
    # whatever a loaded machine times it at (a suite run beside a benchmark timed both pruned
    # trials slower than the baseline, and the front had none to refine)
    sections["objectives"] = {"latency_ms": "minimize", "balanced_accuracy": "maximize", "weight_mb": "minimize"}
    sections["constraints"] = {"max_balanced_accuracy_drop": MAX_BALANCED_DROP}
    # fp32 and no quantization: the pruned trials' latency is the pruning's
    sections["space"] = dict(TINY_STUDY["space"], prune_ratio=[0.2, 0.5], kd_temperature=[1.0, 4.0],
                             quantization=["none"])
    sections["budget"] = dict(sections["budget"], trial_timeout_s=600)  # a loaded machine must not stop them
    lines = []
    for section, fields in sections.items():
        lines += [f"[{section}]", *(f"{k} = {toml_value(v)}" for k, v in fields.items()), ""]
    path = folder / "tiny.toml"
    path.write_text("\n".join(lines))
    storage = f"sqlite:///{folder / 'study.db'}"
    assert main(["run", str(path), "--storage", storage, "--no-progress"]) == 0
    return storage, path, folder


def test_balanced_accuracy_is_measured_constrained_and_reported(study, capsys):
    storage, _, _ = study
    optuna_study, repository = open_study("tiny", storage)
    baseline = repository.trial("tiny", 0).measurement
    complete = [t for t in optuna_study.trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 2
    for trial in complete:
        measurement = repository.trial("tiny", trial.number).measurement
        drop = baseline["balanced_accuracy"] - measurement["balanced_accuracy"]
        assert measurement["balanced_accuracy_drop"] == pytest.approx(drop)
        assert trial.constraints["balanced_accuracy_drop"] == pytest.approx(drop - MAX_BALANCED_DROP)
        assert trial.values[1] == measurement["balanced_accuracy"]  # the objective
    assert main(["trials", "tiny", "--storage", storage]) == 0
    assert "balanced_accuracy" in capsys.readouterr().out


def test_a_study_without_refined_records_reads_as_before(study):
    storage, _, folder = study
    optuna_study, repository = open_study("tiny", storage)
    assert repository.refined("tiny") == []
    assert not any(column.startswith("refined_") for column in pareto_front(optuna_study, repository))
    assert Catalog(storage).study("tiny").refined_rows() == []
    assert main(["report", "tiny", "--storage", storage, "-o", str(folder / "before.html")]) == 0
    assert "Refined points" not in (folder / "before.html").read_text()


def _pruned_front(storage: str) -> list[int]:
    optuna_study, repository = open_study("tiny", storage)
    records = {r.trial_number: r for r in repository.trials("tiny")}
    return [int(n) for n in pareto_front(optuna_study, repository)["trial"]
            if Recipe.from_dict(records[int(n)].recipe).prune_ratio > 0]


def test_refine_stores_shows_and_exports_the_refined_model(study, tmp_path, capsys):
    storage, _, folder = study
    test_a_study_without_refined_records_reads_as_before(study)  # whatever order the tests run in
    pruned = _pruned_front(storage)
    assert pruned, "the tiny study's front has no pruned point"
    number = pruned[0]
    assert main(["refine", "tiny", "--storage", storage, "--trial", str(number), "--steps", str(STEPS)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith(f"refine: trial {number} seed"))
    assert ": validation accuracy " in line and "; test accuracy " in line  # each figure says its split

    optuna_study, repository = open_study("tiny", storage)
    [row] = repository.refined("tiny")
    short = repository.trial("tiny", number).measurement
    assert (row.trial_number, row.steps, row.status) == (number, STEPS, "complete")
    assert row.measurement["finetune_steps_run"] == STEPS and short["finetune_steps_run"] == 20
    assert row.recipe == {**repository.trial("tiny", number).recipe, "finetune_steps": STEPS}
    assert row.seed == optuna_study.trials[number].user_attrs["seed"]
    assert 0.0 <= row.measurement["balanced_accuracy"] <= 1.0
    kept = row.measurement["build"]
    assert kept["selection_score_name"] == "balanced_accuracy"  # the study is constrained on it
    assert 1 <= kept["selected_step"] <= STEPS and len(kept["selection_curve"]) == 20
    # the search is over: the refined model is scored on the test split too, against the
    # baseline's figure on the same examples (what the study stored when its search ended)
    on_test, stored = row.measurement["test"], optuna_study.user_attrs[TEST_ATTR]
    assert on_test["examples"] == stored["examples"] and on_test["examples"] != row.measurement["judged_on"]["examples"]
    assert on_test["accuracy_drop"] == pytest.approx(stored["baseline_accuracy"] - on_test["accuracy"])
    low, high = on_test["accuracy_drop_ci"]
    assert low <= on_test["accuracy_drop"] <= high

    assert main(["pareto", "tiny", "--storage", storage, "--format", "json"]) == 0
    front = {p["trial"]: p for p in json.loads(capsys.readouterr().out)}
    assert front[number]["refined_accuracy"] == pytest.approx(row.measurement["accuracy"])  # JSON keeps 10 digits
    assert front[number]["refined_steps"] == STEPS and front[number]["accuracy"] == pytest.approx(short["accuracy"])
    assert front[number]["refined_test_accuracy"] == pytest.approx(on_test["accuracy"])

    [shown] = Catalog(storage).study("tiny").refined_rows()
    assert (shown["trial"], shown["short_steps"], shown["steps"]) == (number, 20, STEPS)
    assert shown["refined_balanced_accuracy"] == row.measurement["balanced_accuracy"]
    assert main(["report", "tiny", "--storage", storage, "-o", str(folder / "after.html")]) == 0
    html = (folder / "after.html").read_text()
    assert "Refined points" in html and f"20 → <b>{STEPS}</b>" in html
    assert "<th>validation accuracy (%)</th>" in html and "<th>test drop (pts)</th>" in html
    assert "Accuracy on the test split" in html and f"on {stored['examples']} examples no trial saw" in html

    out = tmp_path / "refined"
    assert main(["export", "tiny", "--storage", storage, "--trial", str(number), "--refined",
                 "--format", "state_dict", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verified"] is True and manifest["refined"]["steps"] == STEPS
    assert manifest["recipe"]["finetune_steps"] == STEPS and manifest["measured"]["accuracy"] == row.measurement["accuracy"]
    assert manifest["rebuilt_accuracy"] == pytest.approx(row.measurement["accuracy"], abs=1e-9)  # the same model
    assert manifest["accuracy"]["test"]["accuracy"] == on_test["accuracy"]  # the refined model's, not its trial's
    assert manifest["accuracy"]["test"]["baseline_accuracy"] == stored["baseline_accuracy"]

    capsys.readouterr()
    assert main(["export", "tiny", "--storage", storage, "--trial", "0", "--refined", "--out", str(tmp_path / "x")]) == 2
    assert "has no refined model" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_the_study_files_refine_section_runs_after_the_search(study, capsys):
    storage, path, _ = study
    path.write_text(path.read_text() + f"\n[refine]\ntop = 5\nsteps = {STEPS // 2}\n")
    before = len(open_study("tiny", storage)[1].refined("tiny"))
    assert main(["run", str(path), "--storage", storage, "--no-progress"]) == 0  # nothing left to search
    printed = capsys.readouterr().out
    assert "already has 3 finished trials" in printed and "refine: trials" in printed
    _, repository = open_study("tiny", storage)
    added = repository.refined("tiny")[before:]
    assert sorted(r.trial_number for r in added) == sorted(_pruned_front(storage))  # top 5 of fewer: all
    assert {r.steps for r in added} == {STEPS // 2} and {r.status for r in added} == {"complete"}


@pytest.mark.parametrize("argv, message", [
    (["--trial", "0", "--steps", "10"], "not pruned"),
    (["--top", "0", "--steps", "10"], "top = 0"),
    (["--top", "1", "--steps", "0"], "steps = 0"),
    (["--top", "1", "--steps", "10", "--seeds", "0"], "seeds = 0"),
    (["--trial", "99", "--steps", "10"], "trial = 99"),
])
def test_bad_refine_input_is_one_line_and_refines_nothing(study, capsys, argv, message):
    storage, _, _ = study
    before = len(open_study("tiny", storage)[1].refined("tiny"))
    assert main(["refine", "tiny", "--storage", storage, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert len(open_study("tiny", storage)[1].refined("tiny")) == before


def test_top_points_come_fastest_first_or_most_pruned_first(study):
    from slimtune.search.refine import RefineError, choose

    storage, _, _ = study
    optuna_study, repository = open_study("tiny", storage)
    records = {r.trial_number: r for r in repository.trials("tiny")}
    pruned = _pruned_front(storage)
    assert choose(optuna_study, repository, len(pruned), None) == pruned  # the front's order: fastest first
    by_ratio = choose(optuna_study, repository, len(pruned), None, order="most_pruned")
    ratios = [Recipe.from_dict(records[n].recipe).prune_ratio for n in by_ratio]
    assert sorted(by_ratio) == sorted(pruned) and ratios == sorted(ratios, reverse=True)
    with pytest.raises(RefineError, match="order = 'slowest': allowed: fastest, most_pruned"):
        choose(optuna_study, repository, 1, None, order="slowest")


def _copy(folder: Path, tmp_path: Path) -> str:
    """The study's database copied whole (sqlite's backup: the write-ahead log too)."""
    import sqlite3

    with sqlite3.connect(folder / "study.db") as source, sqlite3.connect(tmp_path / "copy.db") as target:
        source.backup(target)
    return f"sqlite:///{tmp_path / 'copy.db'}"


def test_several_seeds_are_all_stored_and_the_best_on_held_back_images_is_kept(study, tmp_path, capsys):
    from slimtune.search.results import chosen_refined

    _, _, folder = study
    storage = _copy(folder, tmp_path)  # the other tests count this study's records
    number = _pruned_front(storage)[0]
    before = len(open_study("tiny", storage)[1].refined("tiny"))
    assert main(["refine", "tiny", "--storage", storage, "--trial", str(number), "--steps", "10", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert f"refine: trial {number}: 3 seeds, validation balanced accuracy" in out and "spread" in out

    optuna_study, repository = open_study("tiny", storage)
    runs = repository.refined("tiny")[before:]
    trial_seed = optuna_study.trials[number].user_attrs["seed"]
    assert [r.seed for r in runs] == [trial_seed, trial_seed + 1000, trial_seed + 2000]
    assert {r.status for r in runs} == {"complete"}
    every = [r for r in repository.refined("tiny") if r.trial_number == number and r.status == "complete"]
    best = max(r.measurement["build"].get("selection_score", -1) for r in every)  # other tests' runs too
    chosen = chosen_refined(repository, "tiny")[number]
    assert chosen.id == max((r for r in every if r.measurement["build"].get("selection_score") == best),
                            key=lambda r: r.id).id  # the best on the held-back images; the newest among equals
    assert main(["pareto", "tiny", "--storage", storage, "--format", "json"]) == 0
    front = {p["trial"]: p for p in json.loads(capsys.readouterr().out)}
    assert front[number]["refined_balanced_accuracy"] == pytest.approx(chosen.measurement["balanced_accuracy"])


def test_a_refined_record_without_a_selection_score_ranks_below_one_with_it(study, tmp_path):
    from slimtune.search.results import chosen_refined

    _, _, folder = study
    storage = _copy(folder, tmp_path)
    _, repository = open_study("tiny", storage)
    recipe = repository.trial("tiny", 1).recipe
    old = {"accuracy": 0.9, "balanced_accuracy": 0.9, "build": {}}  # refined by a slimtune before keep_best
    new = {"accuracy": 0.5, "balanced_accuracy": 0.5, "build": {"selection_score": 0.4, "selected_step": 3}}
    for name, measurement in (("new", new), ("old", old)):
        repository.record_refined("tiny", 99, steps=10, seed=len(name), status="complete", recipe=recipe,
                                  measurement=measurement, accuracy_drop=0.0)  # a number no other test refines
    assert chosen_refined(repository, "tiny")[99].measurement == new  # the held-out 0.9 never decides


def test_control_reruns_the_short_fine_tune_beside_each_seed_and_pairs_them(study, tmp_path, capsys):
    """`--control`: per seed, the search's fine-tune (TINY_STUDY's 20 steps) re-run as the long
    one runs (same seed, held-back split, best step kept), stored and paired with it."""
    from tests.conftest import TINY_STUDY

    _, _, folder = study
    storage = _copy(folder, tmp_path)
    number = _pruned_front(storage)[0]
    before = len(open_study("tiny", storage)[1].refined("tiny"))
    assert main(["refine", "tiny", "--storage", storage, "--trial", str(number), "--steps", "30", "--seeds", "2",
                 "--control"]) == 0
    out = capsys.readouterr().out
    optuna_study, repository = open_study("tiny", storage)
    runs = repository.refined("tiny")[before:]
    short = TINY_STUDY["budget"]["finetune_steps"]
    seed = optuna_study.trials[number].user_attrs["seed"]
    assert [(r.steps, r.seed) for r in runs] == [(short, seed), (30, seed), (short, seed + 1000), (30, seed + 1000)]
    assert all(r.status == "complete" and r.measurement["build"].get("selected_step") for r in runs)
    assert f"refine: trial {number} seed {seed} control ({short} steps, as the search)" in out
    gains = [100 * (runs[i + 1].measurement["balanced_accuracy"] - runs[i].measurement["balanced_accuracy"]) for i in (0, 2)]
    line = next(l for l in out.splitlines() if "under the same seeds and held-back split" in l)
    assert line == (f"refine: trial {number}: 30 steps against the search's {short} under the same seeds and held-back "
                    f"split: validation balanced accuracy {sum(gains) / 2:+.2f} pts on average "
                    f"({gains[0]:+.2f} / {gains[1]:+.2f} per seed)")
    # the study file asks for it the same way
    from slimtune.search.config import RefineSection

    assert RefineSection(control=True).control and not RefineSection().control
