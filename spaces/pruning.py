"""Structured pruning: removes whole channels (and attention heads) so the model really shrinks.

Unstructured masks leave tensor shapes alone and save nothing at inference, so this knob
only does structured pruning, through torch-pruning's dependency graph, which knows which
channels of coupled layers (residual adds, concatenations, norms) must go together.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

PRUNE_RATIO_RANGE = (0.0, 0.9)

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
) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer group, in place; returns `model`.

    The classifier keeps its `num_classes` outputs. In `nn.MultiheadAttention` every head is
    narrowed (the embedding width stays a multiple of the head count, so the head count is
    kept): torch-pruning removes whole heads only where q, k and v are separate Linear layers.
    """
    if not PRUNE_RATIO_RANGE[0] <= ratio <= PRUNE_RATIO_RANGE[1]:
        raise ValueError(f"prune_ratio={ratio} outside {list(PRUNE_RATIO_RANGE)}")
    if importance not in IMPORTANCES:
        raise ValueError(f"prune_importance={importance!r}; allowed: {sorted(IMPORTANCES)}")
    if ratio == 0.0:
        return model
    head_counts = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
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
            ignored_layers=classifier_layers(model, num_classes),
            round_to=math.lcm(*head_counts) if head_counts else None,  # widths stay divisible by heads
        )
        pruner.step()
    _refresh_cached_widths(model)
    model.train(was_training)
    return model


def _refresh_cached_widths(model: nn.Module) -> None:
    """Some models keep a layer width as a plain attribute that their `forward` reads;
    torch-pruning changes the layers, so the attribute must follow."""
    from torchvision.models import VisionTransformer

    for module in model.modules():
        if isinstance(module, VisionTransformer):
            module.hidden_dim = module.conv_proj.out_channels
