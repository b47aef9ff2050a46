"""The joint space sampled by real Optuna studies: conditional params, fixed knobs, round trips."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest

from slimtune.spaces import Recipe, SearchSpace
from slimtune.spaces.joint import DEFAULT_KD_ALPHA

optuna.logging.set_verbosity(optuna.logging.WARNING)

FULL = SearchSpace(
    prune_ratio=(0.0, 0.8),
    prune_importance=("l1", "l2", "fpgm"),
    kd_temperature=(1.0, 8.0),
    kd_alpha=(0.1, 0.9),
    quantization=("none", "int8_weight_only", "int8_dynamic"),
    precision=("fp32",),
    runtime=("eager",),
    finetune_steps=50,
)


def _sample(space: SearchSpace, n: int, seed: int, enqueue: list[dict] = ()) -> list[tuple[optuna.Trial, Recipe]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for params in enqueue:
        study.enqueue_trial(params)
    out = []
    for _ in range(n):
        trial = study.ask()
        recipe = space.suggest(trial)
        study.tell(trial, 0.0)
        out.append((trial, recipe))
    return out


def _unpruned_extras() -> list[dict]:
    return [
        {"prune_ratio": 0.0, "quantization": "none"},
        {"prune_ratio": 0.0, "quantization": "int8_dynamic"},
        {"prune_ratio": 0.0, "quantization": "int8_weight_only"},
    ]


def test_kd_params_only_when_something_was_pruned():
    samples = _sample(FULL, 60, seed=0, enqueue=_unpruned_extras())
    pruned = unpruned = 0
    for trial, recipe in samples:
        if recipe.prune_ratio > 0:
            pruned += 1
            assert {"prune_importance", "kd_temperature", "kd_alpha"} <= set(trial.params)
            assert 1.0 <= recipe.kd_temperature <= 8.0
            assert 0.1 <= recipe.kd_alpha <= 0.9
            assert recipe.finetune_steps == 50
            assert recipe.prune_importance in FULL.prune_importance
        else:
            unpruned += 1
            assert not {"prune_importance", "kd_temperature", "kd_alpha"} & set(trial.params)
            assert recipe.kd_temperature is None and recipe.kd_alpha == 0.0 and recipe.finetune_steps == 0
            assert recipe.prune_importance == "l2"
        assert 0.0 <= recipe.prune_ratio <= 0.8
    assert pruned >= 50 and unpruned == 3


def test_no_kd_without_fine_tuning_steps_or_without_pruning():
    no_steps = SearchSpace(prune_ratio=(0.1, 0.5), kd_temperature=(1.0, 4.0), finetune_steps=0)
    for trial, recipe in _sample(no_steps, 20, seed=1):
        assert recipe.prune_ratio > 0
        assert "kd_temperature" not in trial.params and "kd_alpha" not in trial.params
        assert recipe.kd_temperature is None and recipe.finetune_steps == 0

    no_pruning = SearchSpace(kd_temperature=(1.0, 4.0), kd_alpha=(0.0, 1.0), finetune_steps=30,
                             quantization=("none", "int8_weight_only"))
    for trial, recipe in _sample(no_pruning, 20, seed=2):
        assert set(trial.params) == {"quantization"}
        assert recipe.prune_ratio == 0.0 and recipe.kd_temperature is None and recipe.finetune_steps == 0


def test_kd_alpha_defaults_when_not_searched():
    space = SearchSpace(prune_ratio=(0.1, 0.5), kd_temperature=(2.0, 6.0), finetune_steps=10)
    for trial, recipe in _sample(space, 20, seed=3):
        assert "kd_alpha" not in trial.params
        assert recipe.kd_alpha == DEFAULT_KD_ALPHA
        assert 2.0 <= trial.params["kd_temperature"] <= 6.0


def test_single_choice_knobs_are_not_params():
    space = SearchSpace(prune_ratio=(0.0, 0.5), prune_importance=("fpgm",), quantization=("int8_dynamic",),
                        precision=("bf16",), runtime=("compile",))
    for trial, recipe in _sample(space, 20, seed=4):
        assert set(trial.params) == {"prune_ratio"}
        assert recipe.prune_importance == "fpgm"
        assert (recipe.quantization, recipe.precision, recipe.runtime) == ("int8_dynamic", "bf16", "compile")


def test_zero_width_prune_range_is_not_searched():
    space = SearchSpace(prune_ratio=(0.0, 0.0), kd_temperature=(1.0, 4.0), finetune_steps=10,
                        precision=("fp32", "bf16"))
    for trial, recipe in _sample(space, 10, seed=5):
        assert set(trial.params) == {"precision"}
        assert recipe.prune_ratio == 0.0


@pytest.mark.parametrize("seed", [0, 7])
def test_params_and_space_rebuild_the_same_recipe(seed):
    space = dataclasses.replace(FULL, precision=("fp32", "bf16", "fp16"), runtime=("eager", "compile"))
    for trial, recipe in _sample(space, 40, seed=seed, enqueue=_unpruned_extras()):
        rebuilt = space.suggest(optuna.trial.FixedTrial(trial.params))
        assert rebuilt == recipe
        assert Recipe.from_dict(recipe.to_dict()) == recipe
        assert Recipe.from_dict(json.loads(recipe.to_json())) == recipe


def test_the_same_seed_samples_the_same_recipes():
    first = [recipe for _, recipe in _sample(FULL, 15, seed=11)]
    second = [recipe for _, recipe in _sample(FULL, 15, seed=11)]
    other = [recipe for _, recipe in _sample(FULL, 15, seed=12)]
    assert first == second
    assert first != other


def test_from_dict_ignores_unknown_keys():
    recipe = Recipe(prune_ratio=0.3, kd_temperature=2.0, kd_alpha=0.4, finetune_steps=5, quantization="int8_dynamic")
    data = {**recipe.to_dict(), "accuracy": 0.9, "notes": "x"}
    assert Recipe.from_dict(data) == recipe


@pytest.mark.parametrize(
    "space",
    [
        FULL,
        SearchSpace(),
        SearchSpace(prune_ratio=(0.0, 0.6), precision=("fp32", "bf16", "fp16")),
        SearchSpace(quantization=("int8_weight_only", "none"), precision=("bf16", "fp32"), runtime=("compile", "eager")),
        SearchSpace(prune_ratio=(0.0, 0.9), prune_importance=("l1", "bn_scale"), kd_temperature=(1.0, 20.0),
                    finetune_steps=100, runtime=("eager", "compile")),
    ],
    ids=["full", "empty", "precisions", "reordered", "runtimes"],
)
def test_enqueued_baseline_params_give_the_baseline(space):
    trial, recipe = _sample(space, 1, seed=0, enqueue=[space.baseline_params()])[0]
    assert recipe.is_baseline
    assert recipe.runtime == space.runtime[0]
    assert recipe == space.baseline_recipe()
    assert recipe.describe() == ("baseline" if recipe.runtime == "eager" else recipe.runtime)
    assert trial.params == space.baseline_params()


def test_is_baseline_ignores_only_the_runtime():
    assert Recipe(runtime="compile").is_baseline
    assert not Recipe(prune_ratio=0.1).is_baseline
    assert not Recipe(quantization="int8_dynamic").is_baseline
    assert not Recipe(precision="bf16").is_baseline


def test_without_removes_one_choice():
    space = FULL.without("quantization", "int8_dynamic")
    assert space.quantization == ("none", "int8_weight_only")
    assert FULL.quantization == ("none", "int8_weight_only", "int8_dynamic")  # frozen original
    assert space.prune_ratio == FULL.prune_ratio


@pytest.mark.parametrize(
    "space",
    [SearchSpace(precision=("bf16", "fp16")), SearchSpace(quantization=("int8_weight_only", "int8_dynamic"))],
    ids=["no-fp32", "no-none"],
)
def test_baseline_params_are_valid_for_any_space(space):
    _sample(space, 1, seed=0, enqueue=[space.baseline_params()])
    assert not space.contains_baseline()  # trial 0 is then measured from baseline_recipe()
    assert space.baseline_recipe().is_baseline


def test_fine_tuned_recipe_without_kd_says_it_is_fine_tuned():
    space = SearchSpace(prune_ratio=(0.2, 0.5), finetune_steps=30)
    _, recipe = _sample(space, 1, seed=0)[0]
    assert recipe.finetune_steps == 30 and recipe.kd_temperature is None  # will be fine-tuned
    assert "fine-tune" in recipe.describe()


def test_deployments_are_one_choice_and_the_baseline_is_one_of_them_or_not() -> None:
    space = SearchSpace(precision=("fp32", "fp16"), runtime=("eager", "compile"),
                        deployments=(("fp32", "contiguous", "none", "eager"), ("fp16", "contiguous", "none", "compile")))
    assert space.contains_baseline()
    assert space.baseline_params() == {"deployment": "fp32/contiguous/none/eager"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        recipe = space.suggest(trial)
        seen.add((recipe.precision, recipe.runtime))
        assert set(trial.params) == {"deployment"}  # the four fields are not sampled on their own
    assert seen == {("fp32", "eager"), ("fp16", "compile")}
    assert space.allows(Recipe(precision="fp16", runtime="eager")) == (
        "fp16/contiguous/none/eager is not among the settings the target screen kept")
    without_baseline = dataclasses.replace(space, deployments=space.deployments[1:] + (("fp16", "contiguous", "none", "eager"),))
    assert not without_baseline.contains_baseline()
