"""Top-1 accuracy on the held-out split, through the callable as deployed."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset

from .batching import eval_batches


def top1_accuracy(
    run: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """`prepare` turns a float32 batch into what the deployed model takes (dtype, memory format)."""
    correct = total = 0
    with torch.inference_mode():
        for inputs, labels, real in eval_batches(dataset, batch_size, device, dtype):
            if prepare is not None:
                inputs = prepare(inputs)
            logits = run(inputs)[:real]
            if not torch.isfinite(logits).all():
                raise FloatingPointError("non-finite logits during evaluation")
            correct += int((logits.argmax(dim=-1) == labels).sum())
            total += real
    return correct / total
