"""The knob registry: config, the joint space, the recipe and the probe all follow it; and the
knobs this registry added (memory format, prune shape, the compiled runtimes)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from torch import nn

from slimtune.search.config import SpaceSection, TargetSection, parse_config
from slimtune.spaces import Recipe, SearchSpace, probe
from slimtune.spaces.knob import Candidate
from slimtune.spaces.memory_format import MemoryFormatKnob
from slimtune.spaces.pruning import channel_widths, global_layer_cap, prune
from slimtune.spaces.registry import KNOBS, recipe_defaults, study_fields


def test_every_registered_field_is_a_study_file_field_a_space_field_and_a_recipe_field():
    names = {field.name for field in study_fields()}
    assert set(SpaceSection.model_fields) == names - {"runtime"}  # runtimes live in [target]
    assert {f.name for f in dataclasses.fields(SearchSpace)} == names | {"finetune_steps", "baseline_runtime", "deployments"}
    assert {f.name for f in dataclasses.fields(Recipe)} == set(recipe_defaults())
    assert Recipe() == Recipe(**recipe_defaults()) and Recipe().is_baseline
    assert [knob.name for knob in KNOBS] == [
        "layers", "pruning", "distillation", "precision", "memory_format", "quantization", "runtime",
    ]


def test_a_knobs_choices_are_validated_from_its_declaration():
    base = {"study": {"name": "s"}, "workload": {"model": "slimtune:small_cnn", "data": "sklearn:digits", "input_shape": [1, 8, 8]}}
    config = parse_config({**base, "space": {"memory_format": ["contiguous", "channels_last"], "prune_round_to": [8, 32]}})
    assert config.search_space().memory_format == ("contiguous", "channels_last")
    assert config.search_space().prune_round_to == (8, 32)
    with pytest.raises(ValueError, match=r"space.memory_format.0 = 'nhwc'.*'contiguous' or 'channels_last'"):
        parse_config({**base, "space": {"memory_format": ["nhwc"]}}, "s")
    with pytest.raises(ValueError, match=r"space.prune_scope"):
        parse_config({**base, "space": {"prune_scope": ["layerwise"]}}, "s")
    with pytest.raises(ValueError, match="'compile\\+cudagraphs' needs a CUDA device"):
        TargetSection(device="cpu", runtimes=["eager", "compile+cudagraphs"])


def test_new_fields_are_sampled_and_described():
    space = SearchSpace(prune_ratio=(0.5, 0.5), prune_round_to=(8, 16), prune_scope=("uniform", "global"),
                        memory_format=("contiguous", "channels_last"), runtime=("eager", "compile"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        recipe = space.suggest(trial)
        seen.add((recipe.prune_round_to, recipe.prune_scope, recipe.memory_format))
        study.tell(trial, 0.0)
    assert {s[0] for s in seen} == {8, 16} and {s[1] for s in seen} == {"uniform", "global"}
    assert {s[2] for s in seen} == {"contiguous", "channels_last"}
    recipe = Recipe(prune_ratio=0.5, prune_round_to=16, prune_scope="global", memory_format="channels_last",
                    runtime="compile+cudagraphs")
    assert recipe.describe() == "prune 0.50 global /16, channels_last, compile+cudagraphs"


def test_a_recipe_stored_before_a_knob_existed_loads_with_that_knob_left_alone():
    old = {"prune_ratio": 0.3, "prune_importance": "l2", "kd_temperature": None, "kd_alpha": 0.0,
           "finetune_steps": 0, "quantization": "none", "precision": "bf16", "runtime": "eager"}
    recipe = Recipe.from_dict(old)
    assert recipe.memory_format == "contiguous" and recipe.prune_round_to == 1 and recipe.prune_scope == "uniform"


def _convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10),
    )


@pytest.mark.parametrize("round_to", [8, 16, 32])
def test_pruned_widths_are_multiples_of_round_to(round_to):
    torch.manual_seed(0)
    model = prune(_convnet(), 0.55, torch.randn(1, 3, 16, 16), 10, round_to=round_to)
    widths = channel_widths(model)
    assert widths["0"] % round_to == 0 and widths["3"] % round_to == 0
    assert widths["0"] + widths["3"] < 64 + 96
    assert widths["8"] == 10  # the classifier keeps its classes


def test_global_scope_ranks_layers_together_within_the_per_layer_cap():
    torch.manual_seed(0)
    model = _convnet()
    with torch.no_grad():  # make the first layer's channels much less important than the second's
        model[0].weight.mul_(0.01)
    pruned = prune(model, 0.4, torch.randn(1, 3, 16, 16), 10, scope="global")
    widths = channel_widths(pruned)
    cap = global_layer_cap(0.4)
    assert widths["0"] < round(64 * 0.6)  # the unimportant layer lost more than the average
    assert widths["0"] >= int(64 * (1 - cap))  # ... but no more than the cap allows
    uniform = channel_widths(prune(_convnet(), 0.4, torch.randn(1, 3, 16, 16), 10))
    assert uniform["0"] == round(64 * 0.6) and uniform != widths


def test_channels_last_converts_weights_and_inputs():
    model = _convnet().eval()
    candidate = Candidate(model, torch.device("cpu"))
    MemoryFormatKnob().apply(candidate, Recipe(memory_format="channels_last"), context=None)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    batch = candidate.inputs(torch.randn(2, 3, 16, 16))
    assert batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()
    assert candidate(batch).shape == (2, 10)


def test_probe_removes_what_the_cpu_or_the_input_cannot_run():
    space = SearchSpace(memory_format=("contiguous", "channels_last"), runtime=("eager", "cudagraphs", "compile+cudagraphs"),
                        precision=("fp32", "tf32"))
    probed, removals = probe(space, torch.device("cpu"), (64,))
    assert probed.memory_format == ("contiguous",) and probed.runtime == ("eager",) and probed.precision == ("fp32",)
    reasons = {(r.knob, r.value): r.reason for r in removals}
    assert reasons[("memory_format", "channels_last")] == "channels_last needs image inputs [C, H, W]; input_shape is [64]"
    assert reasons[("runtime", "compile+cudagraphs")] == "CUDA graphs need a CUDA device"
    kept, _ = probe(SearchSpace(memory_format=("contiguous", "channels_last")), torch.device("cpu"), (3, 8, 8))
    assert kept.memory_format == ("contiguous", "channels_last")
