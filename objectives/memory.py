"""Memory of a candidate: the bytes its weights really occupy, and the peak during inference.

Weights: every parameter and buffer, and for torchao's quantized tensor subclasses the inner
tensors they really store (int8 data plus scales), so a quantized layer counts at its real size.

Peak during one forward = weights + input + the peak of what the forward allocates on top
(+ the pool a CUDA graph keeps between replays). Only the candidate counts, not the rest of
the process (the teacher, data, graphs of earlier trials):
- CUDA: `torch.cuda.max_memory_allocated` after a reset, minus what was allocated before.
  cuDNN/cuBLAS workspaces taken from PyTorch's allocator during the forward count.
- CPU: the peak of bytes held by the CPU allocator during the forward, read from the
  profiler's allocation events (every allocation is attributed to the op that made it, every
  free is an event of its own). This includes transients inside ops, such as the fp32 weight
  an int8 weight-only layer dequantizes, but not memory that kernels allocate outside
  PyTorch's allocator (oneDNN scratch) nor the allocator's own overhead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


def _storage_bytes(tensor: torch.Tensor, seen: set[int]) -> int:
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(_storage_bytes(getattr(tensor, name), seen) for name in names)
    if tensor.device.type == "meta":
        return 0
    storage = tensor.untyped_storage()
    key = storage.data_ptr()
    if key in seen:
        return 0
    seen.add(key)
    return storage.nbytes()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of distinct storage behind all parameters and buffers (shared storage once)."""
    seen: set[int] = set()
    tensors = [p.data if isinstance(p, nn.Parameter) else p for p in model.parameters()]
    return sum(_storage_bytes(t, seen) for t in [*tensors, *model.buffers()])


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Kineto prints profiler start/stop lines straight to fd 2, whatever KINETO_LOG_LEVEL
    says (torch 2.14); on a CLI they are noise. Python-level errors still raise normally."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_transient_peak_bytes(run: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        output = run(example)
        del output
    timeline = []
    for event in prof.events():
        delta = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if delta:
            timeline.append((event.time_range.start, delta))
    timeline.sort(key=lambda item: item[0])
    live = peak = 0
    for _, delta in timeline:
        live += delta
        peak = max(peak, live)
    return peak


def peak_inference_bytes(
    run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, example: torch.Tensor
) -> int:
    """Peak bytes of one forward of `run(example)` (call after warm-up): the candidate's
    weights + the input + the peak of what the forward allocates on top, plus what a runtime
    keeps between calls (a CUDA graph's pool). Other tensors of the process do not count."""
    resident = weight_bytes(model) + example.untyped_storage().nbytes()
    held = run.held_bytes(example) if hasattr(run, "held_bytes") else 0
    if example.device.type != "cuda":
        return resident + held + _cpu_transient_peak_bytes(run, example)
    torch.cuda.synchronize(example.device)
    before = torch.cuda.memory_allocated(example.device)
    torch.cuda.reset_peak_memory_stats(example.device)
    with torch.inference_mode():
        run(example)
    torch.cuda.synchronize(example.device)
    return resident + held + max(0, torch.cuda.max_memory_allocated(example.device) - before)
