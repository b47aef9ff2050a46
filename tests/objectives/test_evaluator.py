"""The evaluator on the digits workload: baseline, pruned, quantized, bf16, timeout, hopeless."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from slimtune.objectives import OBJECTIVE_NAMES, Budget, Evaluator, TrialStopped
from slimtune.spaces import Recipe

# A generous trial timeout: only the timeout test is about time (the machine may be busy).
# Six repeats at the least: the median's interval needs six samples, and on a loaded machine the
# 0.5-s cap stops the stream at its floor (CI once stopped it at five: no interval).
BUDGET = Budget(finetune_steps=20, latency_repeats=6, latency_warmup=1, latency_max_s=0.5, trial_timeout_s=600.0)
PRUNED = Recipe(prune_ratio=0.5, kd_temperature=4.0, kd_alpha=0.5, finetune_steps=20)


@pytest.fixture(scope="module")
def evaluator(digits_workload, digits_baseline) -> Evaluator:
    return Evaluator(digits_workload, digits_baseline, "cpu", batch_sizes=(64,), budget=BUDGET)


@pytest.fixture(scope="module")
def baseline_measurement(evaluator):
    return evaluator.evaluate(Recipe())


@pytest.fixture(scope="module")
def pruned_measurement(evaluator):
    return evaluator.evaluate(PRUNED)


def _float_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def test_baseline_recipe_measures_the_baseline(evaluator, baseline_measurement, digits_baseline):
    m = baseline_measurement
    assert m.accuracy == evaluator.baseline_accuracy
    assert evaluator.baseline_accuracy > 0.9  # the fixture's CNN learnt digits
    assert m.params == sum(p.numel() for p in digits_baseline.parameters())
    assert m.weight_mb == pytest.approx(_float_bytes(digits_baseline) / 1e6)
    assert m.latency_repeats >= 5  # the minimum; more until the interval is within +-1% (or a cap)
    assert m.latency_block >= 1
    # The median's interval exists only when the stream supports one: on a loaded machine the
    # 0.5-s cap can stop it at six samples in a run (lag-1 autocorrelation > 0 widens the
    # interval past the ends), and then no interval is reported and convergence is not claimed.
    if m.latency_ci_low_ms is None:
        assert m.latency_ci_high_ms is None and not m.latency_converged
    else:
        assert m.latency_ci_low_ms <= m.latency_ms <= m.latency_ci_high_ms
    primary = m.latency_by_batch_size["64"]
    assert (primary["ci_low_ms"], primary["ci_high_ms"]) == (m.latency_ci_low_ms, m.latency_ci_high_ms)
    assert 0 < m.latency_ms <= m.latency_p95_ms
    assert m.peak_memory_mb >= m.weight_mb
    assert m.batch_size == 64
    assert m.quantized_layers == [] and m.unquantized_layers == {}
    assert m.finetune_steps_run == 0
    assert set(m.latency_by_batch_size) == {"64"}
    for name in OBJECTIVE_NAMES:
        assert m.objective(name) == float(getattr(m, name))
    with pytest.raises(KeyError):
        m.objective("speed")


def test_pruned_recipe_is_smaller(baseline_measurement, pruned_measurement):
    base, pruned = baseline_measurement, pruned_measurement
    assert pruned.params < base.params
    assert pruned.macs < base.macs
    assert pruned.weight_mb < base.weight_mb
    assert pruned.finetune_steps_run == 20


def test_fine_tuning_recovers_accuracy_after_pruning(evaluator, pruned_measurement):
    untuned = evaluator.evaluate(Recipe(prune_ratio=0.5))
    assert untuned.params == pruned_measurement.params
    assert pruned_measurement.accuracy > untuned.accuracy
    assert pruned_measurement.accuracy > 0.8


def test_evaluating_leaves_the_baseline_alone(evaluator, pruned_measurement, digits_baseline):
    # pruned_measurement ran first; the teacher and the fixture model are still whole.
    again = evaluator.evaluate(Recipe())
    assert again.accuracy == evaluator.baseline_accuracy
    assert again.params == sum(p.numel() for p in digits_baseline.parameters())
    assert all(type(p.data) is torch.Tensor and p.dtype == torch.float32 for p in digits_baseline.parameters())


def test_quantized_recipe_lists_its_layers(evaluator, baseline_measurement, digits_baseline):
    m = evaluator.evaluate(Recipe(quantization="int8_weight_only"))
    layers = {name for name, module in digits_baseline.named_modules()
              if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))}
    assert layers == {"0", "3", "7", "12", "14"}
    # The grayscale stem (a single input channel) is the one torchao refuses.
    assert set(m.quantized_layers) == layers - {"0"}
    assert set(m.unquantized_layers) == {"0"}
    assert m.unquantized_layers["0"]
    assert m.weight_mb < 0.5 * baseline_measurement.weight_mb
    assert m.params == baseline_measurement.params  # storage changes, the count does not
    assert m.accuracy >= evaluator.baseline_accuracy - 0.05


def test_bf16_recipe_halves_the_weight_bytes(evaluator, baseline_measurement):
    m = evaluator.evaluate(Recipe(precision="bf16"))
    assert m.weight_mb / baseline_measurement.weight_mb == pytest.approx(0.5, abs=0.01)
    assert m.accuracy >= evaluator.baseline_accuracy - 0.05


def test_several_batch_sizes_are_all_timed(digits_workload, digits_baseline):
    evaluator = Evaluator(digits_workload, digits_baseline, "cpu", batch_sizes=(32, 8), budget=BUDGET)
    m = evaluator.evaluate(Recipe())
    assert set(m.latency_by_batch_size) == {"32", "8"}
    assert m.batch_size == 32
    assert m.latency_ms == m.latency_by_batch_size["32"]["median_ms"]


@pytest.mark.parametrize("recipe", [Recipe(), PRUNED], ids=["baseline", "fine-tuned"])
def test_tiny_trial_timeout_stops_the_trial(digits_workload, digits_baseline, recipe):
    budget = dataclasses.replace(BUDGET, trial_timeout_s=0.01)
    evaluator = Evaluator(digits_workload, digits_baseline, "cpu", batch_sizes=(64,), budget=budget)
    with pytest.raises(TrialStopped) as info:
        evaluator.evaluate(recipe)
    assert str(info.value).startswith("timeout")


def test_hopeless_candidate_is_stopped(digits_workload, digits_baseline):
    budget = dataclasses.replace(BUDGET, finetune_steps=40)
    evaluator = Evaluator(digits_workload, digits_baseline, "cpu", batch_sizes=(64,), budget=budget,
                          max_accuracy_drop=0.0)
    recipe = Recipe(prune_ratio=0.9, kd_temperature=4.0, kd_alpha=0.5, finetune_steps=40)
    with pytest.raises(TrialStopped) as info:
        evaluator.evaluate(recipe, seed=0)
    assert str(info.value).startswith("hopeless")


def test_the_extrapolation_takes_the_faster_of_the_recovery_since_the_start_and_the_recent_one():
    from slimtune.objectives.evaluator import extrapolated

    # a transformer's fine-tune: pruning left 0.88, it dipped to 0.85 and is climbing again
    assert extrapolated(0.88, 0.83, 0.87, 150, 300, 600) == pytest.approx(0.87 + 0.04 / 150 * 300)  # 0.95: goes on
    # since the start alone it would be 0.87 (no recovery): stopped below a 0.89 floor
    assert extrapolated(0.88, 0.88, 0.87, 0, 300, 600) == pytest.approx(0.87)
    # a steady climb: the rate since the start
    assert extrapolated(0.50, 0.70, 0.80, 150, 300, 600) == pytest.approx(0.80 + 0.30 / 300 * 300)
    # falling: nothing more is expected than what it has
    assert extrapolated(0.90, 0.89, 0.85, 150, 300, 600) == pytest.approx(0.85)
