"""Latency of one forward at a fixed batch size and input shape, measured until it repeats.

What a figure is: the per-call time of the forward. A sample is one *block* of k back-to-back
calls between one pair of timestamps (CUDA events on a GPU, `perf_counter` on the CPU), divided
by k; k is 1 for a forward of a millisecond or more, and for a faster one it is chosen so a
block lasts about `block_ms` (1 ms). A model that runs in 20 us is launch-bound: timing each
call alone measures the timer and the launch gaps around it, and is how it is deployed only
if it is never called twice in a row. The median and p95 are over the blocks' per-call times
(a block averages k calls, so one slow call is diluted by k).

How many samples: after warm-up, at least `repeats` (the study's `latency_repeats`), then on
until the 95% confidence interval of the median lies within +-`rel_tol` (1%) of the median and
the two halves of the stream agree (see `StoppingRule`), or a cap (`max_repeats` samples,
`max_seconds`) is hit. The interval, the sample count, k and whether the rule was met are
returned with the figures, so a reader sees how firm each one is.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

#: a block of k calls should last at least this long (CUDA events resolve ~0.5 us; launch
#: overhead of ~5-20 us per call is then a small, steady part of the block)
BLOCK_MS = 1.0
#: the most calls in one block (a forward of under 1 us would otherwise take thousands)
MAX_BLOCK = 1000
#: single calls timed at the end of the warm-up to choose k (part of the warm-up when it has as many)
CALIBRATION_CALLS = 5
#: samples at most, whatever the stopping rule says: this many times the minimum, up to MAX_REPEATS
REPEATS_CAP_FACTOR = 20
MAX_REPEATS = 2000


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p95_ms: float
    mean_ms: float
    #: samples taken (blocks); each is the per-call time of `block` calls
    repeats: int
    #: 95% order-statistic confidence interval of the median (None below 6 samples)
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None
    block: int = 1
    #: True when the stopping rule was met; False when a cap (or a fixed count) ended it
    converged: bool = False
    #: why the measurement stopped: "interval" | "max_repeats" | "max_seconds" | "fixed"
    stopped_by: str = "fixed"
    #: seconds spent measuring, warm-up and block calibration included
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


@functools.lru_cache(maxsize=4096)
def median_ranks(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """1-based ranks (l, u) such that [x_(l), x_(u)] covers the median with probability at
    least `confidence`, for any continuous distribution of independent samples.

    The number of samples below the true median is Binomial(n, 1/2), so P(x_(l) <= median <
    x_(u)) = P(l <= B < u); l is the largest rank with P(B < l) <= (1 - confidence)/2 and u = n +
    1 - l by symmetry. Computed exactly (log-space pmf); None when n is too small for any
    interval to reach the confidence (n < 6 at 95%)."""
    alpha = (1.0 - confidence) / 2
    log_half_n = n * math.log(0.5)
    cumulative, rank = 0.0, 0
    for i in range(0, n // 2 + 1):
        cumulative += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
        if cumulative > alpha:
            break
        rank = i + 1  # P(B <= i) = P(B < i + 1) <= alpha
    if rank < 1:
        return None
    return rank, n + 1 - rank


def median_interval(sorted_values: Sequence[float], confidence: float = 0.95,
                    inflation: float = 1.0) -> tuple[float, float] | None:
    """The order-statistic confidence interval of the median of already sorted samples.

    `inflation` (>= 1) is how much larger than Binomial(n, 1/2)'s the variance of the count
    below the median is when the samples are not independent (see `StoppingRule`); above 1 the
    ranks come from the normal approximation with that variance."""
    n = len(sorted_values)
    if inflation <= 1.0:
        ranks = median_ranks(n, confidence)
    else:
        z = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
        spread = z * math.sqrt(n * inflation) / 2
        low, high = math.floor(n / 2 - spread), math.ceil(n / 2 + 1 + spread)
        ranks = (low, high) if low >= 1 and high <= n else None
    if ranks is None:
        return None
    return sorted_values[ranks[0] - 1], sorted_values[ranks[1] - 1]


def variance_inflation(samples: Sequence[float]) -> float:
    """How much less than n independent samples the stream is worth: (1 + r) / (1 - r) for
    the lag-1 autocorrelation r of the samples in time order (the AR(1) effective sample size,
    n / inflation). About 1 for independent samples (an isolated outlier lowers r); about L - 1
    for a stream that switches between two modes in bursts of L; large for a drift. Never
    below 1: an interval is only ever widened."""
    n = len(samples)
    if n < 3:
        return 1.0
    mean = statistics.fmean(samples)
    centred = [value - mean for value in samples]
    denominator = sum(c * c for c in centred)
    if denominator <= 0:
        return 1.0
    r = sum(a * b for a, b in zip(centred, centred[1:])) / denominator
    if r >= 0.999:
        return float("inf")
    return max(1.0, (1 + r) / (1 - r))


@dataclass(frozen=True)
class StoppingRule:
    """When a stream of timings has measured its median well enough.

    Why the order-statistic interval: it needs no assumption about the shape of the
    distribution (timings are skewed, heavy-tailed and sometimes multimodal, where a normal
    interval on the mean is wrong), its coverage is exact rather than asymptotic, it needs no
    resampling (a bootstrap would cost more than a fast forward at every check) and it is
    deterministic. Its one assumption is independent samples, which bursts, drift and regime
    changes break; so the binomial's variance is inflated by the samples' lag-1
    autocorrelation (`variance_inflation`), which widens the interval exactly when the samples
    come in runs.

    Stop when all hold:
    1. at least `min_repeats` samples;
    2. the 95% interval of the median (inflated as above) lies within +-`rel_tol` of it;
    3. the medians of the first and second halves of the stream each lie within +-`rel_tol`
       of the whole stream's median (a slow drift, seen directly).
    A bimodal stream whose modes are both common puts its median ranks across the gap, so (2)
    fails. One that switches mode in bursts can, at a moment when one mode holds the majority
    (bursts A B A), look tight to the plain interval; its runs inflate the variance, so (2)
    still fails. A stream that stays in one mode for longer than its first `min_repeats`
    samples cannot be told from a stable one; the caps end what never settles. A minority
    mode under about 40% of independent samples leaves the median in the majority mode; that
    is then the median, and the p95 shows the other mode.
    """

    min_repeats: int = 50
    rel_tol: float = 0.01
    confidence: float = 0.95

    def interval(self, samples: Sequence[float]) -> tuple[float, float] | None:
        ordered = sorted(samples)
        if not ordered:
            return None
        inflation = variance_inflation(samples)
        if math.isinf(inflation):
            return None
        return median_interval(ordered, self.confidence, inflation)

    def met(self, samples: Sequence[float]) -> bool:
        n = len(samples)
        if n < max(self.min_repeats, 6):
            return False
        median = statistics.median(samples)
        interval = self.interval(samples)
        if interval is None or median <= 0:
            return False
        low, high = interval
        if low < median * (1 - self.rel_tol) or high > median * (1 + self.rel_tol):
            return False
        half = n // 2
        return all(abs(statistics.median(part) - median) <= self.rel_tol * median
                   for part in (samples[:half], samples[half:]))


def collect(
    sample: Callable[[], float],
    rule: StoppingRule,
    *,
    max_repeats: int = MAX_REPEATS,
    max_seconds: float = 5.0,
    floor_repeats: int = 10,
    clock: Callable[[], float] = time.perf_counter,
    adaptive: bool = True,
) -> tuple[list[float], bool, str]:
    """Take samples until `rule` is met or a cap is hit; returns (samples in order, whether the
    rule was met, what stopped it). The time cap applies once `floor_repeats` samples ran (a
    slow candidate is not timed for minutes, and never on fewer). `adaptive=False` takes
    exactly `rule.min_repeats` (the old fixed count; the time cap still applies)."""
    samples: list[float] = []
    started = clock()
    next_check = rule.min_repeats
    limit = max(max_repeats, rule.min_repeats) if adaptive else rule.min_repeats
    while len(samples) < limit:
        samples.append(sample())
        if adaptive and len(samples) >= next_check:
            if rule.met(samples):
                return samples, True, "interval"
            next_check = len(samples) + max(1, len(samples) // 20)  # sorting costs O(n log n): check every 5%
        if len(samples) >= floor_repeats and clock() - started > max_seconds:
            return samples, False, "max_seconds"
    return samples, False, "max_repeats" if adaptive else "fixed"


def choose_block(per_call_ms: float, block_ms: float = BLOCK_MS, max_block: int = MAX_BLOCK) -> int:
    """How many calls a block needs to last about `block_ms`."""
    if per_call_ms >= block_ms or per_call_ms <= 0:
        return 1 if per_call_ms > 0 else max_block
    return min(max_block, math.ceil(block_ms / per_call_ms))


def _block_timer(run: Callable[[torch.Tensor], Any], example: torch.Tensor,
                 clock: Callable[[], float]) -> Callable[[int], float]:
    """A function timing k back-to-back calls between one pair of timestamps, in ms per call."""
    if example.device.type == "cuda":
        def timed(k: int) -> float:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(k):
                run(example)
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / k
    else:
        def timed(k: int) -> float:
            begin = clock()
            for _ in range(k):
                run(example)
            return (clock() - begin) * 1e3 / k
    return timed


def measure_latency(
    run: Callable[[torch.Tensor], Any],
    example: torch.Tensor,
    *,
    warmup: int = 10,
    repeats: int = 50,
    max_seconds: float = 5.0,
    min_repeats: int = 10,
    rel_tol: float = 0.01,
    max_repeats: int | None = None,
    adaptive: bool = True,
    blocks: bool = True,
    block_ms: float = BLOCK_MS,
    block: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyStats:
    """Time `run(example)` per call: warm-up, then blocks of k calls (`blocks=False`: k = 1),
    at least `repeats` of them and on until the median's interval is within +-`rel_tol`
    (`adaptive=False` or `rel_tol=0`: exactly `repeats`); stops at `max_repeats` (default
    20 x `repeats`, at most 2000), or after `max_seconds` once `min_repeats` ran. Everything
    measured is returned, the count actually used included. `block` fixes k (confirmation
    rounds keep one k per model, so every round times the same thing)."""
    adaptive = adaptive and rel_tol > 0
    if max_repeats is None:
        max_repeats = min(MAX_REPEATS, max(repeats, REPEATS_CAP_FACTOR * repeats))
    started = clock()
    timed = _block_timer(run, example, clock)
    calibrate = blocks and block is None
    with torch.inference_mode():
        # the last 5 warm-up calls are timed one by one and their median sets k (no extra calls)
        for _ in range(warmup - CALIBRATION_CALLS if calibrate else warmup):
            run(example)
        if example.device.type == "cuda":
            torch.cuda.synchronize(example.device)
        if block is None:
            block = 1
            if calibrate:
                block = choose_block(statistics.median(timed(1) for _ in range(CALIBRATION_CALLS)), block_ms)
        rule = StoppingRule(min_repeats=repeats, rel_tol=rel_tol)
        samples, converged, stopped_by = collect(
            lambda: timed(block), rule, max_repeats=max_repeats, max_seconds=max_seconds,
            floor_repeats=min(min_repeats, repeats), clock=clock, adaptive=adaptive,
        )
    ordered = sorted(samples)
    interval = rule.interval(samples)
    return LatencyStats(
        median_ms=statistics.median(ordered),
        p95_ms=_percentile(ordered, 0.95),
        mean_ms=statistics.fmean(ordered),
        repeats=len(ordered),
        ci_low_ms=interval[0] if interval else None,
        ci_high_ms=interval[1] if interval else None,
        block=block,
        converged=converged,
        stopped_by=stopped_by,
        seconds=clock() - started,
    )
