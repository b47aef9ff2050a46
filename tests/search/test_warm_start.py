"""Warm start: another study's front becomes a new study's first trials; what the new target or
space cannot take is skipped with its reason; a bad source is one line, exit 2, nothing created."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Callable

import optuna
import pytest

from slimtune.search.cli import main
from slimtune.search.warm_start import WARM_START_ATTR, plan_warm_start, space_params
from slimtune.spaces import Recipe, Removal, SearchSpace
from slimtune.storage import Repository, connect

SPACE = SearchSpace(prune_ratio=(0.0, 0.6), kd_temperature=(1.0, 8.0), quantization=("none", "int8_weight_only"),
                    precision=("fp32", "bf16"), finetune_steps=20)


def kd(prune: float, temperature: float, **fields) -> Recipe:
    return Recipe(prune_ratio=prune, kd_temperature=temperature, kd_alpha=0.5, finetune_steps=20, **fields)


def test_a_recipe_of_the_space_gives_the_params_that_rebuild_it() -> None:
    recipe = kd(0.4, 3.0, quantization="int8_weight_only", precision="bf16")
    params, reason = space_params(SPACE, recipe)
    assert reason is None
    assert params == {"prune_ratio": 0.4, "kd_temperature": 3.0, "quantization": "int8_weight_only", "precision": "bf16"}
    assert SPACE.suggest(optuna.trial.FixedTrial(params)) == recipe
    # the fine-tuning budget is the new study's, not a knob: a recipe fine-tuned longer still fits
    params, reason = space_params(SPACE, Recipe(**{**recipe.to_dict(), "finetune_steps": 200}))
    assert reason is None and params["prune_ratio"] == 0.4


@pytest.mark.parametrize("recipe, reason", [
    (kd(0.8, 3.0), "prune_ratio=0.8 is outside this study's range [0, 0.6]"),
    (kd(0.4, 12.0), "kd_temperature=12.0 is outside this study's range [1, 8]"),
    (kd(0.4, 3.0, quantization="int4_weight_only"),
     "quantization='int4_weight_only' is not among this study's choices (none, int8_weight_only)"),
    (kd(0.4, 3.0, runtime="cudagraphs"), "runtime='cudagraphs': this study fixes it at 'eager'"),
    (Recipe(prune_ratio=0.4, finetune_steps=20, kd_alpha=0.5), "this study searches kd_temperature, which the recipe does not set"),
    (Recipe(prune_ratio=0.4, kd_temperature=3.0, kd_alpha=0.9, finetune_steps=20), "kd_alpha=0.9: this study fixes it at 0.5"),
])
def test_a_recipe_outside_the_space_says_why(recipe: Recipe, reason: str) -> None:
    assert space_params(SPACE, recipe) == (None, reason)


def test_the_plan_uses_the_probes_reason_and_skips_the_baseline_and_repeats() -> None:
    removal = Removal("precision", "bf16", "bf16 does not run here")
    front = [(0, Recipe()), (1, kd(0.4, 3.0)), (2, kd(0.4, 3.0, precision="bf16")), (3, kd(0.4, 3.0)), (4, None)]
    plan = plan_warm_start("'src'", front, SPACE.without("precision", "bf16"), [removal])
    assert plan.enqueue == [(1, {"prune_ratio": 0.4, "kd_temperature": 3.0, "quantization": "none"})]
    assert plan.skipped == [
        (0, "the baseline, which is trial 0 anyway"),
        (2, "precision='bf16' cannot run on this target: bf16 does not run here"),
        (3, "same parameters as source trial 1"),
        (4, "no recipe recorded"),
    ]


# A front measured elsewhere (say on a GPU): all feasible and none dominates another.
SOURCE_FRONT = [
    (Recipe(), [10.0, 10.0, 0.990]),
    (kd(0.5, 2.0), [5.0, 5.0, 0.985]),
    (kd(0.5, 2.0, quantization="int8_weight_only", precision="tf32"), [4.0, 4.5, 0.984]),
    (kd(0.55, 3.0, runtime="cudagraphs"), [1.0, 9.0, 0.983]),
    (kd(0.8, 3.0), [0.5, 1.0, 0.981]),
    (kd(0.3, 12.0), [2.0, 2.0, 0.9815]),
    (kd(0.4, 4.0, quantization="int8_weight_only"), [3.0, 3.0, 0.982]),
]


def _source_study(url: str, name: str = "measured-elsewhere") -> None:
    Repository(connect(url)).create_schema()
    study = optuna.create_study(study_name=name, storage=url, directions=["minimize", "minimize", "maximize"])
    for recipe, values in SOURCE_FRONT + [(kd(0.2, 2.0), [0.1, 0.1, 0.5])]:  # the last one is infeasible
        trial = study.ask()
        trial.set_user_attr("recipe", recipe.to_dict())
        trial.set_constraint("accuracy_drop", 0.990 - values[2] - 0.01)
        study.tell(trial, values)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_warm_start_enqueues_the_front_after_the_baseline(write_study: Callable[..., Path], tmp_path: Path) -> None:
    source_url = f"sqlite:///{tmp_path / 'gpu.db'}"
    _source_study(source_url)
    url = f"sqlite:///{tmp_path / 'cpu.db'}"
    path = write_study({"study": {"n_trials": 3}, "space": {"precision": ["fp32", "tf32"]}})
    code, out, err = run_cli("run", str(path), "--storage", url, "--no-progress",
                             "--warm-start", "measured-elsewhere", "--warm-storage", source_url)
    assert code == 0, err
    assert "probe: precision=tf32 removed: " in out
    assert "warm start from 'measured-elsewhere' in " in out and "2 front recipes enqueued, 5 skipped" in out
    for line in [
        "skipped source trial 0: the baseline, which is trial 0 anyway",
        "skipped source trial 2: precision='tf32' cannot run on this target: tf32 is a CUDA matmul mode",
        "skipped source trial 3: runtime='cudagraphs': this study fixes it at 'eager'",
        "skipped source trial 4: prune_ratio=0.8 is outside this study's range [0, 0.6]",
        "skipped source trial 5: kd_temperature=12.0 is outside this study's range [1, 8]",
    ]:
        assert line in out, out

    study = optuna.load_study(study_name="tiny", storage=url)
    first, second, third = study.trials
    assert first.user_attrs["baseline"] is True
    for trial, source in ((second, 1), (third, 6)):
        assert trial.user_attrs["warm_start"]["trial"] == source
        assert Recipe.from_dict(trial.user_attrs["recipe"]) == SOURCE_FRONT[source][0]
        assert trial.state == optuna.trial.TrialState.COMPLETE  # measured here, for real
    record = study.user_attrs[WARM_START_ATTR]
    assert record["enqueued"] == [1, 6] and [s["trial"] for s in record["skipped"]] == [0, 2, 3, 4, 5]
    assert "hypervolume " in out.splitlines()[-1]


def test_a_bad_warm_start_is_one_line_and_creates_nothing(write_study: Callable[..., Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    path = write_study()
    code, out, err = run_cli("run", str(path), "--storage", url, "--no-progress", "--warm-start", "nowhere")
    assert code == 2
    assert err.strip().splitlines() == [f"slimtune: error: --warm-start 'nowhere': study 'nowhere' not found: "
                                        f"no database file at {str(tmp_path / 'new.db')!r}"]
    assert not (tmp_path / "new.db").exists()

    source_url = f"sqlite:///{tmp_path / 'gpu.db'}"
    _source_study(source_url, name="tiny")
    code, out, err = run_cli("run", str(path), "--storage", source_url, "--no-progress", "--warm-start", "tiny")
    assert code == 2 and "that is the study being run" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("run", str(path), "--storage", source_url, "--no-progress", "--warm-start", "other")
    assert code == 2 and "study 'other' not found in " in err
    assert optuna.get_all_study_names(source_url) == ["tiny"]

    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(io.StringIO()) as stderr:
        main(["run", str(path), "--warm-storage", source_url])
    assert exited.value.code == 2 and "--warm-storage needs --warm-start STUDY" in stderr.getvalue()
