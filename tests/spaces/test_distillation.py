"""The distillation loss against hand-computed values, and the fine-tuning loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimtune.spaces.distillation import finetune, kd_loss

STUDENT = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
TEACHER = [[1.0, 1.5, 0.0], [-0.5, 2.0, 1.0]]
LABELS = [0, 2]


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _cross_entropy(rows: list[list[float]], labels: list[int]) -> float:
    return sum(-math.log(_softmax(row, 1.0)[y]) for row, y in zip(rows, labels)) / len(rows)


def _kl_teacher_student(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """Mean over the batch of KL(p_teacher || p_student) at `temperature`."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = _softmax(s_row, temperature), _softmax(t_row, temperature)
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return total / len(student)


def _loss(temperature: float, alpha: float) -> float:
    return kd_loss(
        torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64),
        torch.tensor(LABELS), temperature, alpha,
    ).item()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.3, 0.7])
def test_kd_loss_matches_the_hand_computed_value(temperature, alpha):
    expected = (
        alpha * temperature**2 * _kl_teacher_student(STUDENT, TEACHER, temperature)
        + (1 - alpha) * _cross_entropy(STUDENT, LABELS)
    )
    assert _loss(temperature, alpha) == pytest.approx(expected, rel=1e-9)


def test_two_class_example_by_hand():
    # student [0, 0] -> p_s = [1/2, 1/2]; teacher [log 3, 0] at T=1 -> p_t = [3/4, 1/4]
    student, teacher = [[0.0, 0.0]], [[math.log(3.0), 0.0]]
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    ce = math.log(2.0)
    got = kd_loss(torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64),
                  torch.tensor([1]), 1.0, 0.5).item()
    assert got == pytest.approx(0.5 * kl + 0.5 * ce, rel=1e-12)


def test_soft_term_is_scaled_by_temperature_squared():
    temperature = 3.0
    soft = _loss(temperature, 1.0)
    assert soft == pytest.approx(temperature**2 * _kl_teacher_student(STUDENT, TEACHER, temperature), rel=1e-9)
    # The unscaled KL at T=3 is much smaller than what the loss reports.
    assert soft > 8.0 * _kl_teacher_student(STUDENT, TEACHER, temperature)


def test_alpha_zero_is_plain_cross_entropy():
    for temperature in (1.0, 5.0):
        assert _loss(temperature, 0.0) == pytest.approx(_cross_entropy(STUDENT, LABELS), rel=1e-12)


def test_alpha_one_is_the_pure_soft_term():
    assert _loss(2.0, 1.0) == pytest.approx(4.0 * _kl_teacher_student(STUDENT, TEACHER, 2.0), rel=1e-9)


def test_identical_logits_leave_only_the_hard_term():
    logits = torch.tensor(STUDENT, dtype=torch.float64)
    got = kd_loss(logits, logits.clone(), torch.tensor(LABELS), 4.0, 0.4).item()
    assert got == pytest.approx(0.6 * _cross_entropy(STUDENT, LABELS), rel=1e-9)


# --- fine-tuning -------------------------------------------------------------------------------


def _separable_batches(seed: int = 0):
    """Two Gaussian blobs far apart: class = sign of the first coordinate."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        labels = torch.randint(0, 2, (32,), generator=generator)
        points = torch.randn(32, 2, generator=generator) * 0.3
        points[:, 0] += torch.where(labels == 1, 2.0, -2.0)
        yield points, labels


def _student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))


def _mean_loss(model: nn.Module) -> float:
    batches = _separable_batches(seed=123)
    with torch.no_grad():
        return sum(nn.functional.cross_entropy(model(x), y).item() for x, y in (next(batches) for _ in range(8))) / 8


def test_finetune_runs_the_requested_steps_and_lowers_the_loss():
    student = _student()
    before = _mean_loss(student)
    seen = []

    def counting(batches):
        for batch in batches:
            seen.append(batch)
            yield batch

    result = finetune(student, None, counting(_separable_batches()), steps=60, temperature=1.0, alpha=0.0, lr=1e-2)
    assert result.steps_run == 60
    assert len(seen) == 60
    assert math.isfinite(result.final_loss)
    after = _mean_loss(student)
    assert after < 0.5 * before
    assert not student.training


def test_finetune_with_a_teacher_lowers_the_loss_and_keeps_the_teacher_frozen():
    teacher = _student()
    finetune(teacher, None, _separable_batches(seed=1), steps=80, temperature=1.0, alpha=0.0, lr=1e-2)
    teacher_params = [p.detach().clone() for p in teacher.parameters()]
    student = _student()
    torch.manual_seed(5)
    for p in student.parameters():
        p.data.normal_()
    before = _mean_loss(student)
    result = finetune(student, teacher, _separable_batches(), steps=60, temperature=2.0, alpha=0.5, lr=1e-2)
    assert result.steps_run == 60
    assert _mean_loss(student) < before
    # The teacher is frozen: not a single weight moved.
    for old, new in zip(teacher_params, teacher.parameters()):
        assert torch.equal(old, new)


def test_alpha_above_zero_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        finetune(_student(), None, _separable_batches(), steps=5, temperature=2.0, alpha=0.5)


class _Stop(Exception):
    pass


def test_check_runs_every_check_every_steps():
    calls = []
    result = finetune(_student(), None, _separable_batches(), steps=10, temperature=1.0, alpha=0.0,
                      check_every=2, check=calls.append)
    assert result.steps_run == 10
    assert calls[:4] == [2, 4, 6, 8]
    assert all(step % 2 == 0 and step <= 10 for step in calls)


def test_finetune_stops_when_check_raises():
    student = _student()
    calls = []
    consumed = []

    def check(step: int) -> None:
        calls.append(step)
        if step == 6:
            raise _Stop(f"stop at {step}")

    def counting(batches):
        for batch in batches:
            consumed.append(1)
            yield batch

    with pytest.raises(_Stop, match="stop at 6"):
        finetune(student, None, counting(_separable_batches()), steps=50, temperature=1.0, alpha=0.0,
                 check_every=3, check=check)
    assert calls == [3, 6]
    assert len(consumed) == 6  # no batch after the stop
