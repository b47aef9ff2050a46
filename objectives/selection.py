"""Keeping the best step of a long fine-tune, chosen on images held back from training.

`slimtune refine` fine-tunes a front point for many more steps than the search did. On a small
data set (ELPV: 1,968 training images) the long run overfits, and its last step is not its
best: measured on an H200, 1000 steps took a pruned ResNet-18 from 78.0% balanced accuracy to
74.1%. Choosing the step on the held-out split would make the held-out figure a selected
maximum instead of a measurement, so the choice is made on a share of the *training* images,
carved off once (stratified, fixed seed: every refined point and its export see the same
split) and never trained on by the run that uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from .batching import ResizedTensorDataset

#: the share of the training images held back to choose the step, and its seed
SELECTION_SHARE = 0.15
SELECTION_SEED = 0
#: how many times over a run the held-back images are scored (plus the last step)
SELECTION_CHECKS = 20


def _labels(dataset: Dataset) -> torch.Tensor | None:
    """The split's labels without loading its images, where the dataset says them."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    if isinstance(dataset, Subset):
        parent = _labels(dataset.dataset)
        return parent[torch.as_tensor(dataset.indices)] if parent is not None else None
    targets = getattr(dataset, "targets", None)
    return torch.as_tensor(targets) if targets is not None else None


def _take(dataset: Dataset, index: torch.Tensor) -> Dataset:
    """Rows `index` of `dataset`; in-memory data stays in memory (its fast batching path)."""
    if isinstance(dataset, ResizedTensorDataset):
        images, labels = dataset.tensors
        return ResizedTensorDataset(images[index], labels[index], dataset.shape, dataset.flips)
    if type(dataset) is TensorDataset:
        return TensorDataset(*(t[index] for t in dataset.tensors))
    return Subset(dataset, index.tolist())


def hold_back(dataset: Dataset, share: float = SELECTION_SHARE, seed: int = SELECTION_SEED) -> tuple[Dataset, Dataset]:
    """(what is trained on, what chooses the step): `share` of each class held back (at least
    one image of every class that has two), the rest kept for training."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share = {share}: must be between 0 and 1")
    generator = torch.Generator().manual_seed(seed)
    labels = _labels(dataset)
    if labels is None:  # no labels to stratify on: a plain seeded split
        order = torch.randperm(len(dataset), generator=generator)
        cut = max(1, round(share * len(order)))
        return _take(dataset, order[cut:].sort().values), _take(dataset, order[:cut].sort().values)
    held = []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = max(1, round(share * len(members))) if len(members) >= 2 else 0
        held.append(members[:count])
    chosen = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[chosen] = False
    return _take(dataset, torch.nonzero(keep).flatten()), _take(dataset, chosen)


@dataclass
class BestStep:
    """The best-scoring weights seen so far; `offer` them after each scoring, `restore` at the
    end. Ties keep the earlier step (fewer steps from the teacher's weights)."""

    score_name: str
    step: int = 0
    score: float = -math.inf
    scored: list[tuple[int, float]] = field(default_factory=list)
    _state: dict[str, torch.Tensor] | None = None

    def offer(self, model: nn.Module, step: int, score: float) -> None:
        self.scored.append((step, score))
        if score > self.score:
            self.step, self.score = step, score
            self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        if self._state is not None:
            model.load_state_dict(self._state)

    def facts(self, steps_run: int) -> dict[str, Any]:
        """What the measurement records about the choice."""
        return {"selected_step": self.step, "selected_on": f"training images held back ({SELECTION_SHARE:.0%})",
                "selection_score_name": self.score_name, "selection_score": self.score,
                "selection_curve": [[s, round(v, 6)] for s, v in self.scored], "finetune_steps_run": steps_run}

