"""The tiny module every knob tries its choices on (capabilities.probe): here, apart from the
probe and the registry, so a knob module can import it without importing the other knobs."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def tiny_model(device: torch.device) -> nn.Module:
    # Both a convolution and a linear layer with 64 inputs, so grouped int4 kernels apply.
    return nn.Sequential(
        nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8),
    ).eval().to(device)


def run_tiny(run: Callable[[torch.Tensor], torch.Tensor], device: torch.device, dtype: torch.dtype = torch.float32) -> None:
    with torch.inference_mode():
        out = run(torch.randn(32, 4, 8, 8, device=device, dtype=dtype))
    if not torch.isfinite(out).all():
        raise FloatingPointError("non-finite output")
