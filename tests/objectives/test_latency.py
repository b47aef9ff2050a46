"""The latency stopping rule on synthetic timing streams, the median's interval, and block
timing on the CPU path (a fake clock makes every count exact: no test here is timed)."""

from __future__ import annotations

import random

import pytest
import torch

from slimtune.objectives.latency import (
    StoppingRule, choose_block, collect, measure_latency, median_ranks, variance_inflation,
)

RULE = StoppingRule(min_repeats=50, rel_tol=0.01)


def _stream(values):
    iterator = iter(values)
    return lambda: next(iterator)


def _collect(values, rule=RULE, max_repeats=2000):
    return collect(_stream(values), rule, max_repeats=max_repeats, max_seconds=float("inf"))


def stable(seed=0, n=4000):
    rng = random.Random(seed)
    return [1.0 * rng.lognormvariate(0, 0.01) for _ in range(n)]


def test_runs_inflate_the_variance_and_independent_samples_do_not():
    rng = random.Random(5)
    independent = stable(5, 400)
    assert variance_inflation(independent) < 1.5
    bursts = [(1.0 if (i // 40) % 2 == 0 else 1.2) * rng.lognormvariate(0, 0.002) for i in range(400)]
    assert variance_inflation(bursts) > 20


def test_median_ranks_are_the_binomial_order_statistics():
    assert median_ranks(5) is None  # 2 * 0.5**5 = 6.25% > 5%: no 95% interval from 5 samples
    assert median_ranks(6) == (1, 6)  # coverage 1 - 2/64 = 96.9%
    assert median_ranks(20) == (6, 15)  # the textbook table value
    assert median_ranks(100) == (40, 61)


def test_stable_stream_stops_at_the_minimum_with_a_tight_interval():
    samples, converged, stopped_by = _collect(stable())
    assert converged and stopped_by == "interval"
    assert 50 <= len(samples) <= 60
    low, high = RULE.interval(samples)
    assert 0.99 <= low <= 1.0 <= high <= 1.01


def test_noisier_stable_stream_takes_more_samples_but_stops():
    rng = random.Random(1)
    samples, converged, _ = _collect([rng.lognormvariate(0, 0.05) for _ in range(4000)])
    assert converged and len(samples) > 100


def test_drifting_stream_never_stops_early():
    rng = random.Random(2)  # +0.1% per sample: 5% over the first 50
    samples, converged, stopped_by = _collect([(1 + 0.001 * i) * rng.lognormvariate(0, 0.002) for i in range(4000)],
                                              max_repeats=1000)
    assert not converged and stopped_by == "max_repeats" and len(samples) == 1000


@pytest.mark.parametrize("burst", [10, 25, 40, 7])
def test_bimodal_stream_in_bursts_never_stops_early(burst):
    """1.0 ms and 1.2 ms in alternating bursts: each burst alone looks perfectly stable."""
    rng = random.Random(3)
    values = [(1.0 if (i // burst) % 2 == 0 else 1.2) * rng.lognormvariate(0, 0.002) for i in range(4000)]
    samples, converged, stopped_by = _collect(values, max_repeats=1000)
    assert not converged and stopped_by == "max_repeats"


def test_bimodal_stream_at_random_never_stops_early():
    rng = random.Random(4)
    values = [rng.choice((1.0, 1.2)) * rng.lognormvariate(0, 0.002) for _ in range(4000)]
    samples, converged, _ = _collect(values, max_repeats=1000)
    assert not converged
    low, high = RULE.interval(samples)
    assert low < 1.01 and high > 1.19  # the interval says so: it spans both modes


def test_time_cap_stops_after_the_floor():
    taken = []
    values = iter(stable())

    def sample():  # each sample takes one "second" of a fake clock
        taken.append(1)
        return next(values)

    samples, converged, stopped_by = collect(sample, RULE, max_seconds=5.5, floor_repeats=10,
                                             clock=lambda: float(len(taken)))
    assert not converged and stopped_by == "max_seconds" and len(samples) == 10


def test_fixed_count_takes_exactly_the_minimum():
    samples, converged, stopped_by = collect(_stream(stable()), StoppingRule(min_repeats=50), adaptive=False)
    assert len(samples) == 50 and not converged and stopped_by == "fixed"


def test_choose_block():
    assert choose_block(5.0) == 1 and choose_block(1.0) == 1
    assert choose_block(0.05) == 20
    assert choose_block(0.3) == 4
    assert choose_block(1e-6) == 1000  # capped


#: call times that are exact in binary, so the fake clock adds no rounding noise
FAST_MS, SLOW_MS = 1e3 * 2.0 ** -14, 1e3 * 2.0 ** -9  # 61 us and 1.95 ms


class _FakeModel:
    """Each call advances a fake clock by `call_ms` and counts itself: the block logic is exact."""

    def __init__(self, call_ms: float = FAST_MS):
        self.now, self.calls, self.call_ms = 0.0, 0, call_ms

    def clock(self) -> float:
        return self.now

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.now += self.call_ms / 1e3
        return x


def test_fast_forward_is_timed_in_blocks_and_reported_per_call():
    model = _FakeModel(FAST_MS)
    stats = measure_latency(model, torch.zeros(1), warmup=3, repeats=30, clock=model.clock)
    assert stats.block == 17  # 17 x 61 us >= 1 ms per block
    assert stats.median_ms == FAST_MS  # per call, not per block
    assert stats.ci_low_ms == FAST_MS == stats.ci_high_ms
    assert stats.converged and stats.repeats == 30
    assert model.calls == 5 + 30 * 17  # warm-up (its last 5 calls, here 3 + 2 more, time single calls), blocks


def test_slow_forward_is_timed_call_by_call():
    model = _FakeModel(SLOW_MS)
    stats = measure_latency(model, torch.zeros(1), warmup=1, repeats=10, clock=model.clock)
    assert stats.block == 1 and stats.median_ms == SLOW_MS and stats.repeats == 10


def test_blocks_off_and_fixed_count_is_the_old_measurement():
    model = _FakeModel(FAST_MS)
    stats = measure_latency(model, torch.zeros(1), warmup=2, repeats=50, adaptive=False, blocks=False, clock=model.clock)
    assert stats.block == 1 and stats.repeats == 50 and stats.stopped_by == "fixed"
    assert model.calls == 2 + 50


def test_tiny_real_model_on_the_cpu_gets_blocks():
    """A real tiny module on the CPU runs in microseconds: its block holds many calls."""
    model = torch.nn.Linear(8, 8).eval()
    stats = measure_latency(model, torch.zeros(1, 8), warmup=5, repeats=10, max_seconds=0.5)
    assert stats.block > 1
    assert stats.repeats >= 10 and stats.ci_low_ms <= stats.median_ms <= stats.ci_high_ms
