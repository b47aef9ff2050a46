"""Numeric precision of weights and activations: fp32, tf32, fp16, bf16.

fp32 means IEEE float32 arithmetic: PyTorch leaves cuDNN's TF32 on by default
(`torch.backends.cudnn.allow_tf32 = True`), so an fp32 that does not switch it off runs every
convolution in TF32 (measured on an H100: ResNet-18 at 256x3x224x224 14.0 ms with the
defaults, 24.7 ms with TF32 off). `math_mode` therefore sets both flags explicitly, for every
precision. Only the legacy `allow_tf32` flags are used: torch 2.14 refuses a mix of those and
the newer `fp32_precision` settings.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .knob import Candidate, Knob, StudyField, choose

PRECISION_CHOICES = ("fp32", "tf32", "fp16", "bf16")

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_of(precision: str) -> torch.dtype:
    try:
        return DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision={precision!r}; allowed: {list(PRECISION_CHOICES)}") from None


def cast(model: nn.Module, precision: str) -> nn.Module:
    """Cast floating-point weights and buffers in place (BatchNorm included); returns `model`."""
    return model.to(dtype=dtype_of(precision))


def tf32_enabled() -> dict[str, bool]:
    """The two TF32 switches as they are now (recorded with every measurement)."""
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}


@contextlib.contextmanager
def math_mode(precision: str) -> Iterator[None]:
    """TF32 on for "tf32" only, explicitly off for everything else, restored afterwards."""
    dtype_of(precision)
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class PrecisionKnob(Knob):
    name = "precision"
    fields = (StudyField("precision", "choices", ("fp32",), allowed=PRECISION_CHOICES,
                         help="numeric precision (fp32 with TF32 off; tf32 is CUDA only)"),)
    recipe_fields = {"precision": "fp32"}

    def suggest(self, trial, space, recipe: dict) -> None:
        recipe["precision"] = choose(trial, "precision", space.precision)

    def apply(self, candidate: Candidate, recipe, context) -> None:
        cast(candidate.model, recipe.precision)
        candidate.input_dtype = dtype_of(recipe.precision)
        candidate.record["tf32"] = recipe.precision == "tf32"

    def describe(self, recipe) -> list[str]:
        return [] if recipe.precision == "fp32" else [recipe.precision]

    def probed_field(self) -> StudyField:
        return self.fields[0]

    def unavailable(self, value, device: torch.device, input_shape) -> str | None:
        if value == "tf32" and device.type != "cuda":
            return "tf32 is a CUDA matmul mode; there is no TF32 on this CPU path"
        return None

    def try_on_tiny_model(self, value, device: torch.device) -> None:
        from .tiny import run_tiny, tiny_model

        model = cast(tiny_model(device), value)
        with math_mode(value):
            run_tiny(model, device, dtype_of(value))

