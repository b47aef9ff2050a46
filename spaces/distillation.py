"""Knowledge distillation: fine-tune the compressed student towards the unpruned teacher.

Hinton et al.'s loss: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).
The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones
whatever the temperature, so alpha means the same thing across temperatures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import optuna
import torch
import torch.nn.functional as F
from torch import nn

from .knob import Candidate, Knob, StudyField

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
    autocast: torch.dtype | None = None,
) -> FineTuneResult:
    """Train `student` for `steps` batches with the KD loss against a frozen `teacher`.

    `check(step)` runs every `check_every` steps; whatever it raises ends fine-tuning. The
    evaluator uses it for the time budget and for stopping a hopeless candidate early.
    `autocast` (bf16 on CUDA) is mixed-precision training: the weights stay float32, only the
    fine-tuning is faster; the candidate is measured afterwards in its own precision.
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
        with torch.autocast(inputs.device.type, dtype=autocast, enabled=autocast is not None):
            if teacher is not None and alpha > 0:
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
            else:
                teacher_logits = None
            logits = student(inputs)
        logits = logits.float()
        teacher_logits = teacher_logits.float() if teacher_logits is not None else None
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


DEFAULT_KD_ALPHA = 0.5


class DistillationKnob(Knob):
    """Fine-tuning after pruning, with KD from the unpruned teacher when a temperature range is
    given. Sampled only after pruning: quantization here is post-training, so fine-tuning an
    unpruned model would only retrain the teacher, and there is nothing to recover."""

    name = "distillation"
    fields = (
        StudyField("kd_temperature", "range", None, bounds=KD_TEMPERATURE_RANGE,
                   help="distillation temperature, sampled log-uniform; only after pruning"),
        StudyField("kd_alpha", "range", None, bounds=KD_ALPHA_RANGE,
                   help="weight of the distillation loss against cross-entropy on the labels"),
    )
    recipe_fields = {"kd_temperature": None, "kd_alpha": 0.0, "finetune_steps": 0}

    def suggest(self, trial: optuna.Trial, space, recipe: dict) -> None:
        if recipe.get("prune_ratio", 0.0) <= 0 or space.finetune_steps <= 0:
            return
        recipe["finetune_steps"] = space.finetune_steps
        if space.kd_temperature is not None:
            recipe["kd_temperature"] = trial.suggest_float("kd_temperature", *space.kd_temperature, log=True)
            recipe["kd_alpha"] = trial.suggest_float("kd_alpha", *space.kd_alpha) if space.kd_alpha else DEFAULT_KD_ALPHA

    def contains_baseline(self, space) -> bool:
        return True  # sampled only after pruning

    def apply(self, candidate: Candidate, recipe, context) -> None:
        if recipe.finetune_steps > 0:
            candidate.record.update(context.finetune(candidate.model, recipe))
            context.check_time("fine-tuning")

    def describe(self, recipe) -> list[str]:
        if not recipe.finetune_steps:
            return []
        if recipe.kd_temperature is not None and recipe.kd_alpha > 0:
            return [f"KD T={recipe.kd_temperature:.1f} a={recipe.kd_alpha:.2f}"]
        return ["fine-tune"]
