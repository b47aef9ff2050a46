"""Memory format of 4-D activations and conv weights: contiguous (NCHW) or channels_last (NHWC).

cuDNN's fast bf16/fp16 convolution kernels are NHWC: with NCHW tensors they transpose around
every convolution. The deployed model takes channels_last inputs, so the measured callable
gets them already converted (the conversion is the caller's, as it is in export).
"""

from __future__ import annotations

import torch

from .knob import Candidate, Knob, StudyField, choose

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


class MemoryFormatKnob(Knob):
    name = "memory_format"
    fields = (StudyField("memory_format", "choices", ("contiguous",), allowed=tuple(MEMORY_FORMATS),
                         help="layout of weights and 4-D inputs"),)
    recipe_fields = {"memory_format": "contiguous"}

    def suggest(self, trial, space, recipe: dict) -> None:
        recipe["memory_format"] = choose(trial, "memory_format", space.memory_format)

    def apply(self, candidate: Candidate, recipe, context) -> None:
        candidate.memory_format = MEMORY_FORMATS[recipe.memory_format]
        candidate.model.to(memory_format=candidate.memory_format)

    def describe(self, recipe) -> list[str]:
        return [] if recipe.memory_format == "contiguous" else ["channels_last"]

    def probed_field(self):
        return self.fields[0]

    def unavailable(self, value, device: torch.device, input_shape: tuple[int, ...]) -> str | None:
        if value == "channels_last" and len(input_shape) != 3:
            return f"channels_last needs image inputs [C, H, W]; input_shape is {list(input_shape)}"
        return None
