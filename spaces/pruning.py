"""Structured pruning: removes whole channels (and attention heads) so the model really shrinks.

Unstructured masks leave tensor shapes alone and save nothing at inference, so this knob
only does structured pruning, through torch-pruning's dependency graph, which knows which
channels of coupled layers (residual adds, concatenations, norms) must go together.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import optuna
import torch
import torch_pruning as tp
from torch import nn

from .knob import Candidate, Knob, StudyField, choose

PRUNE_RATIO_RANGE = (0.0, 0.9)
#: channel counts are rounded to a multiple of this (tensor cores want multiples of 8)
ROUND_TO_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128)
#: uniform: every layer loses the same share; global: torch-pruning ranks all groups together
SCOPES = ("uniform", "global")

#: importance criterion name -> factory; the criterion is data in the recipe.
IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "fpgm": lambda: tp.importance.FPGMImportance(),
}


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers whose outputs are the class scores; pruning them would change the output shape."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if heads:
        return heads
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_classes]
    return convs[-1:]


def count_params_and_macs(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one forward at the example's shape (counted, not timed)."""
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(params), int(macs)


def prune(
    model: nn.Module,
    ratio: float,
    example_inputs: torch.Tensor,
    num_classes: int,
    importance: str = "l2",
    *,
    round_to: int = 1,
    scope: str = "uniform",
) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer group, in place; returns `model`.

    `round_to` keeps every pruned width a multiple of it. `scope="global"` ranks the groups of
    all layers together, so unimportant layers lose more; a layer loses at most
    `global_layer_cap(ratio)` of its channels, so no layer is cut down to nothing.

    The classifier keeps its `num_classes` outputs. In `nn.MultiheadAttention` every head is
    narrowed (the embedding width stays a multiple of the head count, so the head count is
    kept): torch-pruning removes whole heads only where q, k and v are separate Linear layers.
    """
    if not PRUNE_RATIO_RANGE[0] <= ratio <= PRUNE_RATIO_RANGE[1]:
        raise ValueError(f"prune_ratio={ratio} outside {list(PRUNE_RATIO_RANGE)}")
    if importance not in IMPORTANCES:
        raise ValueError(f"prune_importance={importance!r}; allowed: {sorted(IMPORTANCES)}")
    if scope not in SCOPES:
        raise ValueError(f"prune_scope={scope!r}; allowed: {list(SCOPES)}")
    if ratio == 0.0:
        return model
    head_counts = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    encoder = encoder_pruning(model, ratio)
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        # torch-pruning warns about bare parameters (class tokens, position embeddings) and
        # then does the right thing for them: prune their last dimension.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs,
            importance=IMPORTANCES[importance](),
            pruning_ratio=ratio,
            ignored_layers=classifier_layers(model, num_classes) + encoder.get("ignored_layers", []),
            round_to=math.lcm(round_to, *head_counts) if head_counts or round_to > 1 else None,
            global_pruning=scope == "global",
            max_pruning_ratio=global_layer_cap(ratio),
            **{key: value for key, value in encoder.items() if key != "ignored_layers"},
        )
        pruner.step()
    _refresh_cached_widths(model)
    model.train(was_training)
    return model


def _self_attentions(model: nn.Module) -> list[nn.Module]:
    """Hugging Face BERT-style self-attention modules: separate `query`, `key` and `value`
    Linear layers, with `num_attention_heads` and `attention_head_size` read by their forward."""
    return [m for m in model.modules()
            if all(isinstance(getattr(m, name, None), nn.Linear) for name in ("query", "key", "value"))
            and hasattr(m, "num_attention_heads") and hasattr(m, "attention_head_size")]


def encoder_pruning(model: nn.Module, ratio: float) -> dict:
    """MetaPruner settings for a Hugging Face encoder (empty for other models): whole attention
    heads go (torch-pruning groups q, k and v by head; each head keeps its width) and the MLP
    loses neurons, both by the prune ratio; the hidden width, the residual stream that every
    layer, LayerNorm and the embeddings share, is kept: every Linear writing into it and the
    embeddings are left out of the ranking."""
    attentions = _self_attentions(model)
    if not attentions:
        return {}
    heads = {}
    projections = set()
    for attention in attentions:
        for name in ("query", "key", "value"):
            heads[getattr(attention, name)] = attention.num_attention_heads
            projections.add(getattr(attention, name))
    hidden = attentions[0].query.in_features
    writers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == hidden
               and m not in projections]
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    return {"num_heads": heads, "prune_num_heads": True, "prune_head_dims": False, "head_pruning_ratio": ratio,
            "ignored_layers": writers + embeddings}


def attention_heads(model: nn.Module) -> list[int]:
    """Heads left in each BERT-style self-attention module, in order (empty for other models)."""
    return [m.num_attention_heads for m in _self_attentions(model)]


def global_layer_cap(ratio: float) -> float:
    """The most a single layer may lose under global pruning: 1.5x the target, at most 95%."""
    return min(0.95, max(ratio, 1.5 * ratio))


def channel_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every convolution and linear layer: what pruning left, per layer."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
    return widths


class PruningKnob(Knob):
    name = "pruning"
    fields = (
        StudyField("prune_ratio", "range", None, bounds=PRUNE_RATIO_RANGE,
                   help="share of channels removed (structured: the model gets smaller)"),
        StudyField("prune_importance", "choices", ("l2",), allowed=tuple(IMPORTANCES),
                   help="how channels are ranked for removal (torch-pruning importance)"),
        StudyField("prune_round_to", "choices", (1,), allowed=ROUND_TO_CHOICES,
                   help="channel counts kept are multiples of this (tensor cores want multiples of 8)"),
        StudyField("prune_scope", "choices", ("uniform",), allowed=SCOPES,
                   help="uniform: every layer loses the ratio; global: channels ranked across layers"),
    )
    recipe_fields = {"prune_ratio": 0.0, "prune_importance": "l2", "prune_round_to": 1, "prune_scope": "uniform"}

    def suggest(self, trial: optuna.Trial, space, recipe: dict) -> None:
        if space.prune_ratio is None or space.prune_ratio[1] <= 0:
            return
        recipe["prune_ratio"] = ratio = trial.suggest_float("prune_ratio", *space.prune_ratio)
        if ratio > 0:  # how to prune matters only when something is pruned
            recipe["prune_importance"] = choose(trial, "prune_importance", space.prune_importance)
            recipe["prune_round_to"] = choose(trial, "prune_round_to", space.prune_round_to)
            recipe["prune_scope"] = choose(trial, "prune_scope", space.prune_scope)

    def contains_baseline(self, space) -> bool:
        return space.prune_ratio is None or 0.0 in (space.prune_ratio[0], space.prune_ratio[1])

    def baseline_params(self, space) -> dict:
        searched = space.prune_ratio is not None and space.prune_ratio[1] > 0
        return {"prune_ratio": 0.0} if searched else {}  # the other fields follow a ratio > 0

    def apply(self, candidate: Candidate, recipe, context) -> None:
        if recipe.prune_ratio > 0:
            prune(
                candidate.model, recipe.prune_ratio, context.example(1), context.num_classes,
                recipe.prune_importance, round_to=recipe.prune_round_to, scope=recipe.prune_scope,
            )
            candidate.record["channel_widths"] = channel_widths(candidate.model)
            if heads := attention_heads(candidate.model):
                candidate.record["attention_heads"] = heads

    def describe(self, recipe) -> list[str]:
        if recipe.prune_ratio <= 0:
            return []
        words = f"prune {recipe.prune_ratio:.2f}"
        if recipe.prune_scope != "uniform":
            words += f" {recipe.prune_scope}"
        if recipe.prune_round_to > 1:
            words += f" /{recipe.prune_round_to}"
        return [words]


def _refresh_cached_widths(model: nn.Module) -> None:
    """Some models keep a layer width as a plain attribute that their `forward` reads;
    torch-pruning changes the layers, so the attribute must follow."""
    from torchvision.models import VisionTransformer

    for module in model.modules():
        if isinstance(module, VisionTransformer):
            module.hidden_dim = module.conv_proj.out_channels
    for attention in _self_attentions(model):  # heads removed whole: each keeps its width
        attention.num_attention_heads = attention.query.out_features // attention.attention_head_size
        attention.all_head_size = attention.query.out_features
