"""What the target can really execute, found by running each choice on a tiny module.

A choice that fails here would fail every trial that samples it, so it is removed from the
space before the study starts, with the reason printed. Each knob says which of its fields
is probed, what it knows without running (`unavailable`), and how to try a value
(`try_on_tiny_model`). Combinations (say int8_dynamic on fp16) are not probed: a trial that
hits one fails with its reason, and the evaluator remembers combinations that fail whatever
the prune ratio.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .errors import one_line
from .joint import SearchSpace
from .registry import KNOBS, recipe_defaults


@dataclass(frozen=True)
class Removal:
    knob: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.knob}={self.value} removed: {self.reason}"


def probe(
    space: SearchSpace, device: torch.device, input_shape: tuple[int, ...] = (3, 32, 32),
    model: nn.Module | None = None,
) -> tuple[SearchSpace, list[Removal]]:
    """Remove from `space` every categorical choice the device (or, given it, the workload's
    `model`) cannot run; say why. Values removed for one model-level reason are one removal."""
    removals: list[Removal] = []
    defaults = recipe_defaults()
    for knob in KNOBS:
        field = knob.probed_field()
        if field is None:
            continue
        if model is not None and not knob.applies_to(model):
            space = dataclasses.replace(space, **{field.name: (defaults[field.name],)})
            continue
        if model is not None:
            unfit: dict[str, list[str]] = {}
            for value in getattr(space, field.name):
                if value != defaults.get(field.name) and (reason := knob.unavailable_on(value, model)):
                    unfit.setdefault(reason, []).append(value)
                    space = space.without(field.name, value)
            removals += [Removal(field.name, ",".join(map(str, values)), reason) for reason, values in unfit.items()]
        for value in getattr(space, field.name):
            if value == defaults.get(field.name):
                continue
            reason = knob.unavailable(value, device, tuple(input_shape))
            if reason is None:
                try:
                    knob.try_on_tiny_model(value, device)
                except Exception as error:  # any failure means "cannot run here"
                    reason = one_line(error, limit=200)
            if reason is not None:
                removals.append(Removal(field.name, value, reason))
                space = space.without(field.name, value)
    return space, removals
