"""Top-1 and balanced accuracy on the held-out split, through the callable as deployed.

Balanced accuracy is the mean of the per-class recalls over the classes the split holds
(scikit-learn's `balanced_accuracy_score`, unadjusted): on imbalanced data (ELPV is about 2:1)
plain accuracy rewards predicting the majority class, balanced accuracy does not (a model that
always answers the majority class scores 1 / number of classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import Dataset

from .batching import eval_batches
from .intervals import Outcomes


@dataclass(frozen=True)
class Scores:
    accuracy: float
    balanced_accuracy: float


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """Mean recall over the classes with at least one true sample; `confusion[t, p]` counts
    samples of true class t predicted as p."""
    support = confusion.sum(dim=1)
    present = support > 0
    recalls = confusion.diagonal()[present].double() / support[present].double()
    return float(recalls.mean()) if len(recalls) else 0.0


def scores_of(outcomes: Outcomes, classes: int | None = None) -> Scores:
    """Top-1 and balanced accuracy of per-example outcomes."""
    classes = classes or int(max(outcomes.labels.max(), outcomes.predictions.max())) + 1
    pairs = outcomes.labels.long() * classes + outcomes.predictions.long()
    confusion = torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes)
    return Scores(float(confusion.diagonal().sum()) / float(confusion.sum()), balanced_accuracy(confusion))


def accuracy_outcomes(
    run: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[Outcomes, int]:
    """Every example's label and prediction, in the split's order (what a paired interval
    needs), and the number of classes the model answers. `prepare` turns a float32 batch into
    what the deployed model takes (dtype, memory format)."""
    labels_seen: list[torch.Tensor] = []
    predicted: list[torch.Tensor] = []
    classes = 0
    with torch.inference_mode():
        for inputs, labels, real in eval_batches(dataset, batch_size, device, dtype):
            if prepare is not None:
                inputs = prepare(inputs)
            logits = run(inputs)[:real]
            if not torch.isfinite(logits).all():
                raise FloatingPointError("non-finite logits during evaluation")
            classes = logits.shape[-1]
            labels_seen.append(labels[:real].long().cpu())
            predicted.append(logits.argmax(dim=-1).cpu())
    if not labels_seen:
        raise ValueError("the held-out split is empty")
    return Outcomes(torch.cat(labels_seen), torch.cat(predicted)), classes


def accuracy_scores(
    run: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Scores:
    """Both figures from one pass. `prepare` turns a float32 batch into what the deployed model
    takes (dtype, memory format)."""
    outcomes, classes = accuracy_outcomes(run, dataset, batch_size, device, dtype, prepare)
    return scores_of(outcomes, classes)


def top1_accuracy(
    run: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """`prepare` turns a float32 batch into what the deployed model takes (dtype, memory format)."""
    return accuracy_scores(run, dataset, batch_size, device, dtype, prepare).accuracy
