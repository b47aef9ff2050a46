"""Knowledge distillation: fine-tune the compressed student towards the unpruned teacher.

Hinton et al.'s loss: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).
The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones
whatever the temperature, so alpha means the same thing across temperatures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

KD_TEMPERATURE_RANGE = (1.0, 20.0)
KD_ALPHA_RANGE = (0.0, 1.0)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Distillation loss; alpha=0 is plain cross-entropy on the labels."""
    hard = F.cross_entropy(student_logits, labels)
    if alpha == 0.0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


@dataclass
class FineTuneResult:
    steps_run: int
    final_loss: float
    seconds: float


def finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    temperature: float,
    alpha: float,
    lr: float = 1e-3,
    check_every: int = 0,
    check: Callable[[int], None] | None = None,
) -> FineTuneResult:
    """Train `student` for `steps` batches with the KD loss against a frozen `teacher`.

    `check(step)` runs every `check_every` steps; whatever it raises ends fine-tuning. The
    evaluator uses it for the time budget and for stopping a hopeless candidate early.
    """
    if alpha > 0 and teacher is None:
        raise ValueError("kd_alpha > 0 needs a teacher")
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    if teacher is not None:
        teacher.eval()
    student.train()
    loss = torch.tensor(float("nan"))
    step = 0
    for step in range(1, steps + 1):
        inputs, labels = next(batches)
        if teacher is not None and alpha > 0:
            with torch.no_grad():
                teacher_logits = teacher(inputs)
        else:
            teacher_logits = None
        logits = student(inputs)
        loss = kd_loss(logits, teacher_logits, labels, temperature, alpha) if teacher_logits is not None \
            else F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if check is not None and check_every and step % check_every == 0 and step < steps:
            student.eval()
            check(step)
            student.train()
    student.eval()
    return FineTuneResult(steps_run=step, final_loss=float(loss.detach()), seconds=time.perf_counter() - start)
