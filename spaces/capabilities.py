"""What the target can really execute, found by running each choice on a tiny module.

A choice that fails here would fail every trial that samples it, so it is removed from the
space before the study starts, with the reason printed. Combinations (say int8_dynamic on
fp16) are not probed: a trial that hits one fails with its reason and the study goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import precision as precision_knob
from . import quantization as quantization_knob
from . import runtime as runtime_knob
from .errors import one_line
from .joint import SearchSpace


@dataclass(frozen=True)
class Removal:
    knob: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.knob}={self.value} removed: {self.reason}"


def _tiny_model() -> nn.Module:
    # Both a convolution and a linear layer with 64 inputs, so grouped int4 kernels apply.
    return nn.Sequential(
        nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8),
    ).eval()


def _tiny_input(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(32, 4, 8, 8, device=device, dtype=dtype)


def _static_reason(knob: str, value: str, device: torch.device) -> str | None:
    if device.type != "cuda":
        if (knob, value) == ("precision", "tf32"):
            return "tf32 is a CUDA matmul mode; there is no TF32 on this CPU path"
        if (knob, value) == ("runtime", "cudagraphs"):
            return "CUDA graphs need a CUDA device"
    return None


def _run_choice(knob: str, value: str, device: torch.device) -> None:
    model = _tiny_model().to(device)
    dtype = torch.float32
    if knob == "precision":
        dtype = precision_knob.dtype_of(value)
        precision_knob.cast(model, value)
    elif knob == "quantization":
        quantization_knob.quantize(model, value, device)
    with torch.inference_mode(), precision_knob.math_mode(value if knob == "precision" else "fp32"):
        run = runtime_knob.prepare(model, value) if knob == "runtime" else model
        out = run(_tiny_input(device, dtype))
        if not torch.isfinite(out).all():
            raise FloatingPointError("non-finite output")


def probe(space: SearchSpace, device: torch.device) -> tuple[SearchSpace, list[Removal]]:
    """Remove from `space` every categorical choice the device cannot run; say why."""
    removals: list[Removal] = []
    for knob in ("precision", "quantization", "runtime"):
        for value in getattr(space, knob):
            if value in ("none", "fp32", "eager"):
                continue
            reason = _static_reason(knob, value, device)
            if reason is None:
                try:
                    _run_choice(knob, value, device)
                except Exception as error:  # any failure means "cannot run here"
                    reason = one_line(error, limit=200)
            if reason is not None:
                removals.append(Removal(knob, value, reason))
                space = space.without(knob, value)
    return space, removals
