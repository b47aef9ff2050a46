"""How the candidate runs: eager, torch.compile, or CUDA graphs. Part of what is measured,
because on a GPU the same weights can be launch-bound in eager and compute-bound compiled."""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from .errors import one_line
from .knob import Candidate, Knob, StudyField, choose

#: compile = inductor's default mode; compile+cudagraphs = inductor with CUDA graphs
#: ("reduce-overhead"); cudagraphs = the eager kernels captured in one CUDA graph
RUNTIME_CHOICES = ("eager", "compile", "cudagraphs", "compile+cudagraphs")
NEEDS_CUDA = ("cudagraphs", "compile+cudagraphs")


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


class CompiledGraphRunner:
    """torch.compile with inductor's CUDA graphs. Their memory lives in a private pool that
    replays never allocate from, so `held_bytes` reads the pool's segments: what was reserved
    in non-default pools by the first call (compile + capture) at each shape."""

    def __init__(self, model: nn.Module):
        self.compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
        self._held_bytes: dict[tuple, int] = {}

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        key = CudaGraphRunner._key(inputs)
        if key in self._held_bytes:
            torch.compiler.cudagraph_mark_step_begin()
            return self.compiled(inputs)
        before = _private_pool_bytes(inputs.device)
        for _ in range(2):  # the first call records, the second captures
            torch.compiler.cudagraph_mark_step_begin()
            output = self.compiled(inputs)
        torch.cuda.synchronize(inputs.device)
        self._held_bytes[key] = max(0, _private_pool_bytes(inputs.device) - before)
        return output

    def held_bytes(self, inputs: torch.Tensor) -> int:
        return self._held_bytes.get(CudaGraphRunner._key(inputs), 0)


def _private_pool_bytes(device: torch.device) -> int:
    """Bytes of allocator segments that belong to a private pool (CUDA graphs), not the default."""
    return sum(
        segment["total_size"] for segment in torch.cuda.memory_snapshot()
        if tuple(segment.get("segment_pool_id", (0, 0))) != (0, 0) and segment["device"] == device.index
    )


def prepare(model: nn.Module, runtime: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the callable that will be timed and deployed.

    Dynamo caches are reset before compiling: compile state leaks between models of one class
    and a later compile at another shape went dynamic and 40% slower (measured on an H100).
    """
    if runtime == "eager":
        return model
    if runtime in NEEDS_CUDA and not torch.cuda.is_available():
        raise RuntimeError(f"runtime {runtime!r} needs a CUDA device")
    if runtime == "compile":
        torch._dynamo.reset()
        return torch.compile(model, dynamic=False)
    if runtime == "cudagraphs":
        return CudaGraphRunner(model)
    if runtime == "compile+cudagraphs":
        torch._dynamo.reset()
        return CompiledGraphRunner(model)
    raise ValueError(f"runtime={runtime!r}; allowed: {list(RUNTIME_CHOICES)}")


class RuntimeKnob(Knob):
    """Its choices live in the study file's `[target] runtimes` (how the model is deployed on
    that target), not in `[space]`."""

    name = "runtime"
    fields = (StudyField("runtime", "choices", ("eager",), allowed=RUNTIME_CHOICES,
                         help="how the deployed model runs; its choices are [target] runtimes"),)
    recipe_fields = {"runtime": "eager"}

    def suggest(self, trial, space, recipe: dict) -> None:
        recipe["runtime"] = choose(trial, "runtime", space.runtime)

    def contains_baseline(self, space) -> bool:
        return True  # the baseline is measured in the first runtime the target lists

    def baseline_params(self, space) -> dict:
        return {"runtime": space.runtime[0]} if len(space.runtime) > 1 else {}  # measured as deployed

    def apply(self, candidate: Candidate, recipe, context) -> None:
        """Wrap the model and run it once at the primary batch size: for compiled runtimes that
        first call is the compilation (and capture), timed as `compile_s`."""
        candidate.run = prepare(candidate.model, recipe.runtime)
        if recipe.runtime == "eager":
            return
        example = candidate.inputs(context.example(context.batch_size))
        started = time.perf_counter()
        with torch.inference_mode():
            candidate.run(example)
        if example.device.type == "cuda":
            torch.cuda.synchronize(example.device)
        candidate.record["compile_s"] = time.perf_counter() - started
        context.check_time(f"{recipe.runtime} compile")

    def describe(self, recipe) -> list[str]:
        return [] if recipe.runtime == "eager" else [recipe.runtime]

    def probed_field(self):
        return self.fields[0]

    def unavailable(self, value, device: torch.device, input_shape) -> str | None:
        if value in NEEDS_CUDA and device.type != "cuda":
            return "CUDA graphs need a CUDA device"
        return None

    def try_on_tiny_model(self, value, device: torch.device) -> None:
        from .tiny import run_tiny, tiny_model

        run_tiny(prepare(tiny_model(device), value), device)
