"""Latency statistics, weight bytes, peak inference memory and top-1 accuracy."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from slimtune.objectives.accuracy import accuracy_scores, top1_accuracy
from slimtune.objectives.latency import measure_latency
from slimtune.objectives.memory import peak_inference_bytes, weight_bytes
from slimtune.spaces.precision import cast
from slimtune.spaces.quantization import quantize

CPU = torch.device("cpu")


# --- latency -----------------------------------------------------------------------------------


class _Counting:
    def __init__(self, sleep_s: float = 0.0):
        self.calls = 0
        self.sleep_s = sleep_s
        self.grad_enabled = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.grad_enabled.append(torch.is_grad_enabled())
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return x * 2


def test_latency_counts_warmup_and_repeats():
    run = _Counting()
    # the fixed rule (single calls, exactly `repeats`); the adaptive rule has tests/objectives/test_latency.py
    stats = measure_latency(run, torch.ones(4), warmup=3, repeats=12, max_seconds=60.0, adaptive=False, blocks=False)
    assert stats.repeats == 12
    assert run.calls == 15
    assert not any(run.grad_enabled)  # timed under inference mode


def test_latency_statistics_are_ordered():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    stats = measure_latency(model, torch.randn(16, 32), warmup=2, repeats=25, max_seconds=60.0)
    assert stats.repeats >= 25  # at least `repeats` samples, more until the interval is tight
    assert 0 < stats.median_ms <= stats.p95_ms
    assert stats.mean_ms > 0


def test_latency_stops_at_max_seconds_once_min_repeats_ran():
    run = _Counting(sleep_s=0.01)
    stats = measure_latency(run, torch.ones(1), warmup=1, repeats=1000, max_seconds=0.05, min_repeats=3, blocks=False)
    assert 3 <= stats.repeats < 1000
    assert run.calls == 1 + stats.repeats


def test_latency_runs_min_repeats_even_when_out_of_time():
    run = _Counting()
    stats = measure_latency(run, torch.ones(1), warmup=0, repeats=50, max_seconds=0.0, min_repeats=4, blocks=False)
    assert stats.repeats == 4
    assert run.calls == 4


# --- weight bytes ------------------------------------------------------------------------------


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).eval()


def test_weight_bytes_of_a_float_model_are_four_bytes_per_parameter():
    model = _mlp()
    assert weight_bytes(model) == sum(p.numel() * 4 for p in model.parameters())


def test_weight_bytes_include_buffers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    expected = sum(p.numel() * 4 for p in model.parameters()) + 8 * 4 * 2 + 8  # running stats + int64 counter
    assert weight_bytes(model) == expected


def test_shared_weights_are_counted_once():
    first = nn.Linear(32, 32, bias=False)
    second = nn.Linear(32, 32, bias=False)
    second.weight = first.weight
    assert weight_bytes(nn.Sequential(first, second)) == 32 * 32 * 4


def test_int8_quantized_model_has_fewer_weight_bytes():
    float_model, quantized_model = _mlp(), _mlp()
    float_bytes = weight_bytes(float_model)
    quantize(quantized_model, "int8_weight_only", CPU)
    quantized_bytes = weight_bytes(quantized_model)
    assert quantized_bytes < float_bytes
    # int8 weights plus per-channel scales and float biases: well under half of fp32.
    assert quantized_bytes < 0.4 * float_bytes
    weights = sum(m.weight.numel() for m in float_model if isinstance(m, nn.Linear))
    assert quantized_bytes >= weights  # at least one byte per weight


def test_bf16_halves_the_weight_bytes():
    model = _mlp()
    before = weight_bytes(model)
    cast(model, "bf16")
    assert weight_bytes(model) * 2 == before


# --- peak inference memory ---------------------------------------------------------------------


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


def test_cpu_peak_covers_weights_and_input_and_grows_with_batch():
    model = _cnn()
    peaks = {}
    for batch in (1, 16):
        example = torch.randn(batch, 3, 32, 32)
        peak = peak_inference_bytes(model, model, example)
        assert peak >= weight_bytes(model) + example.numel() * 4
        # the first conv's output alone is batch x 16 x 32 x 32 floats
        assert peak >= weight_bytes(model) + example.numel() * 4 + batch * 16 * 32 * 32 * 4
        peaks[batch] = peak
    assert peaks[16] > peaks[1]


# --- top-1 accuracy ----------------------------------------------------------------------------


class _OneHot(nn.Module):
    """Predicts the class written in the input's first value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 5).float()


def _dataset(predictions: list[int], labels: list[int]) -> TensorDataset:
    inputs = torch.tensor(predictions, dtype=torch.float32).unsqueeze(1)
    return TensorDataset(inputs, torch.tensor(labels))


def test_top1_gives_the_exact_fraction():
    data = _dataset([0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 1, 2])  # 6 of 8 right
    assert top1_accuracy(_OneHot(), data, batch_size=4, device=CPU) == 6 / 8


@pytest.mark.parametrize("batch_size", [3, 4, 7, 64])
def test_padding_of_the_last_batch_does_not_count(batch_size):
    # The first sample is right, so padding made of copies of it would inflate the score.
    predictions = [1, 2, 3, 0, 4, 4, 1, 2, 3, 0]
    labels = [1, 0, 0, 0, 0, 4, 0, 0, 3, 1]  # right: 0, 3, 5, 8 -> 4 of 10
    assert top1_accuracy(_OneHot(), _dataset(predictions, labels), batch_size=batch_size, device=CPU) == 0.4


class _ListDataset(Dataset):
    def __init__(self, base: TensorDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return self.base[index]


def test_top1_on_datasets_that_are_not_tensor_datasets():
    predictions = [1, 2, 3, 0, 4, 4, 1, 2, 3, 0, 1]
    labels = [1, 0, 0, 0, 0, 4, 0, 0, 3, 1, 1]  # right: 0, 3, 5, 8, 10 -> 5 of 11
    base = _dataset(predictions, labels)
    assert top1_accuracy(_OneHot(), _ListDataset(base), batch_size=4, device=CPU) == 5 / 11
    subset = Subset(base, [0, 1, 2, 3, 5])  # right: 0, 3, 5 -> 3 of 5
    assert top1_accuracy(_OneHot(), subset, batch_size=2, device=CPU) == 3 / 5


def test_top1_sees_fixed_batch_shapes_and_the_requested_dtype():
    shapes, dtypes = [], []

    def run(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        dtypes.append(x.dtype)
        return _OneHot()(x.float())

    data = _dataset([0] * 10, [0] * 10)
    assert top1_accuracy(run, data, batch_size=4, device=CPU, dtype=torch.bfloat16) == 1.0
    assert shapes == [(4, 1)] * 3
    assert dtypes == [torch.bfloat16] * 3


def test_non_finite_logits_raise():
    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 3), float("nan"))

    with pytest.raises(FloatingPointError):
        top1_accuracy(run, _dataset([0, 1], [0, 1]), batch_size=2, device=CPU)


# --- balanced accuracy -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=40), st.integers(1, 9))
def test_balanced_accuracy_matches_scikit_learn(pairs, batch_size):
    """Any predictions (a class predicted but never true, a true class never predicted, one
    class only) and any batch size: the same number as scikit-learn's balanced_accuracy_score."""
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    predictions, labels = [p for p, _ in pairs], [t for _, t in pairs]
    scores = accuracy_scores(_OneHot(), _dataset(predictions, labels), batch_size=batch_size, device=CPU)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true"
        warnings.simplefilter("ignore")
        expected = balanced_accuracy_score(labels, predictions)
    assert scores.balanced_accuracy == pytest.approx(expected, abs=1e-12)
    assert scores.accuracy == pytest.approx(accuracy_score(labels, predictions), abs=1e-12)


def test_balanced_accuracy_does_not_reward_the_majority_class():
    labels = [0] * 8 + [1] * 2  # 4:1
    scores = accuracy_scores(_OneHot(), _dataset([0] * 10, labels), batch_size=4, device=CPU)
    assert scores.accuracy == 0.8 and scores.balanced_accuracy == 0.5
