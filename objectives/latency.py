"""Latency of one forward at a fixed batch size and input shape.

GPU: CUDA events around each forward (host timers would time the launch, not the kernels).
CPU: perf_counter around each forward, with the thread count fixed by the evaluator.
Warm-up first (allocator, autotuning, compilation), then repeats; median and p95 reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p95_ms: float
    mean_ms: float
    repeats: int


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def measure_latency(
    run: Callable[[torch.Tensor], torch.Tensor],
    example: torch.Tensor,
    *,
    warmup: int = 10,
    repeats: int = 50,
    max_seconds: float = 5.0,
    min_repeats: int = 10,
) -> LatencyStats:
    """Time `run(example)`; stops after `repeats`, or after `max_seconds` once `min_repeats` ran
    (the count actually used is returned, so a slow candidate is not timed for minutes)."""
    cuda = example.device.type == "cuda"
    times_ms: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            run(example)
        if cuda:
            torch.cuda.synchronize(example.device)
        started = time.perf_counter()
        for _ in range(repeats):
            if cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                run(example)
                end.record()
                end.synchronize()
                times_ms.append(begin.elapsed_time(end))
            else:
                begin_s = time.perf_counter()
                run(example)
                times_ms.append((time.perf_counter() - begin_s) * 1e3)
            if len(times_ms) >= min_repeats and time.perf_counter() - started > max_seconds:
                break
    times_ms.sort()
    return LatencyStats(
        median_ms=statistics.median(times_ms),
        p95_ms=_percentile(times_ms, 0.95),
        mean_ms=statistics.fmean(times_ms),
        repeats=len(times_ms),
    )
