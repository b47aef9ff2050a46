"""Layer dropping: remove the top encoder layers of a transformer, DistilBERT-style.

A pretrained encoder's upper layers are the most task-specific and the cheapest to lose
(Sajjad et al., "On the effect of dropping layers of pre-trained transformer models", 2023,
found dropping the top layers the best of the simple strategies); the model keeps its
embeddings, its lower layers' pretrained weights and its head, and fine-tuning with
distillation from the full teacher recovers what it can. Each dropped layer removes 1/N of
the encoder's work at every batch size and sequence length, which pruning widths inside a
layer cannot promise (small matrices run below the GPU's peak).

Applies to Hugging Face encoders (a `ModuleList` of layers, each holding a BERT-style
self-attention); on any other model only 0 exists, and the probe says so.
"""

from __future__ import annotations

import optuna
from torch import nn

from .knob import Candidate, Knob, StudyField, choose

#: how many top layers a recipe may drop (a model must keep at least one)
DROP_CHOICES = tuple(range(0, 24))


def encoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The encoder's layer list: the longest ModuleList whose items hold a self-attention
    with separate query/key/value layers (BERT, RoBERTa, MiniLM, ...); None for other models."""
    best = None
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or not len(module):
            continue
        if all(any(all(isinstance(getattr(m, name, None), nn.Linear) for name in ("query", "key", "value"))
                   for m in layer.modules()) for layer in module):
            if best is None or len(module) > len(best):
                best = module
    return best


def drop_top_layers(model: nn.Module, count: int) -> nn.Module:
    """Keep the bottom `len - count` encoder layers, in place; returns `model`."""
    if count == 0:
        return model
    layers = encoder_layers(model)
    if layers is None:
        raise ValueError("drop_layers needs a transformer encoder (a Hugging Face model); this model has none")
    if count >= len(layers):
        raise ValueError(f"drop_layers={count}: the encoder has {len(layers)} layers and must keep one")
    del layers[len(layers) - count:]
    for module in model.modules():  # the config's count follows, so a saved model says what it is
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(layers)
    return model


class LayersKnob(Knob):
    name = "layers"
    fields = (StudyField("drop_layers", "choices", (0,), allowed=DROP_CHOICES,
                         help="top encoder layers removed (transformers only)"),)
    recipe_fields = {"drop_layers": 0}

    def suggest(self, trial: optuna.Trial, space, recipe: dict) -> None:
        recipe["drop_layers"] = choose(trial, "drop_layers", space.drop_layers)

    def apply(self, candidate: Candidate, recipe, context) -> None:
        if recipe.drop_layers:
            drop_top_layers(candidate.model, recipe.drop_layers)
            candidate.record["encoder_layers"] = len(encoder_layers(candidate.model))

    def describe(self, recipe) -> list[str]:
        return [f"drop {recipe.drop_layers} layers"] if recipe.drop_layers else []

    def probed_field(self) -> StudyField:
        return self.fields[0]

    def applies_to(self, model: nn.Module) -> bool:
        return encoder_layers(model) is not None

    def unavailable_on(self, value, model: nn.Module) -> str | None:
        layers = encoder_layers(model)
        if value >= len(layers):
            return f"the encoder has {len(layers)} layers and keeps at least one"
        return None
