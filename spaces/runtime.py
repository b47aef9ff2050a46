"""How the candidate runs: eager, torch.compile, or CUDA graphs. Part of what is measured,
because on a GPU the same weights can be launch-bound in eager and compute-bound compiled."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import one_line

RUNTIME_CHOICES = ("eager", "compile", "cudagraphs")


class CudaGraphRunner:
    """Replays one captured CUDA graph per input shape: the launch overhead of eager mode
    without a compiler. The returned tensor is the graph's static output, overwritten by the
    next call (what deployed graph code does too): use it before calling again."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._held_bytes: dict[tuple, int] = {}

    def _capture(self, example: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        device = example.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
            for _ in range(3):
                self.model(example)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        static_input = example.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_output = self.model(static_input)
        except Exception as error:
            # Ending a broken capture raises its own "previous error during capture"; the
            # first exception in the chain is the one that says what could not be captured.
            cause: BaseException = error
            while cause.__context__ is not None:
                cause = cause.__context__
            raise RuntimeError(f"CUDA graph capture failed: {one_line(cause)}") from error
        self._held_bytes[self._key(example)] = torch.cuda.max_memory_allocated(device) - before
        return graph, static_input, static_output

    def held_bytes(self, inputs: torch.Tensor) -> int:
        """Bytes the graph for this input shape keeps between calls (static input plus the
        peak of the capture's private pool): memory that replays use but never allocate."""
        return self._held_bytes.get(self._key(inputs), 0)

    @staticmethod
    def _key(inputs: torch.Tensor) -> tuple:
        return tuple(inputs.shape), inputs.dtype, inputs.device

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        key = self._key(inputs)
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs)
        graph, static_input, static_output = self._graphs[key]
        static_input.copy_(inputs)
        graph.replay()
        return static_output


def prepare(model: nn.Module, runtime: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the callable that will be timed and deployed.

    Dynamo caches are reset before compiling: compile state leaks between models of one class
    and a later compile at another shape went dynamic and 40% slower (measured on an H100).
    """
    if runtime == "eager":
        return model
    if runtime == "compile":
        torch._dynamo.reset()
        return torch.compile(model, dynamic=False)
    if runtime == "cudagraphs":
        if not torch.cuda.is_available():
            raise RuntimeError("runtime 'cudagraphs' needs a CUDA device")
        return CudaGraphRunner(model)
    raise ValueError(f"runtime={runtime!r}; allowed: {list(RUNTIME_CHOICES)}")
