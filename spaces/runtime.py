"""How the candidate runs: eager, torch.compile, or CUDA graphs. Part of what is measured,
because on a GPU the same weights can be launch-bound in eager and compute-bound compiled."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

RUNTIME_CHOICES = ("eager", "compile", "cudagraphs")


def prepare(model: nn.Module, runtime: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the callable that will be timed and deployed.

    Dynamo caches are reset first: compile state leaks between models of one class and a
    later compile at another shape went dynamic and 40% slower (measured on an H100).
    """
    if runtime == "eager":
        return model
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"runtime={runtime!r}; allowed: {list(RUNTIME_CHOICES)}")
    torch._dynamo.reset()
    if runtime == "compile":
        return torch.compile(model, dynamic=False)
    return torch.compile(model, mode="reduce-overhead", dynamic=False)
