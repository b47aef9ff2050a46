"""Three splits: training, validation (carved from the training data) and test.

A trial is chosen on the figures it is judged by; judged on the same examples that are then
reported, the front's accuracy is a selected maximum, not a measurement (on ELPV's 656 held-out
images a front point's drop moved by about a point either way between runs: as large as the
constraint). So the search never reads the data set's held-out split. `with_validation` carves
a validation split from the training data, stratified by label and seeded from the data's
fingerprint (the same split on every run and every resume of a study, and for every worker);
trials fine-tune on the rest and are judged on it (constraint, hopeless test, objectives,
screen). The held-out split becomes the test split: each front point and the baseline are
measured on it once, when the search has ended (search/holdout.py).

The baseline is trained on the training part too, so validation is unseen by every model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch

from .selection import _labels, _take

#: the share of the training data carved as validation, and the least it holds (while the
#: training part keeps at least two thirds)
VALIDATION_SHARE = 0.15
VALIDATION_MIN = 100


def split_seed(fingerprint: str) -> int:
    """The validation split's seed: from the data's fingerprint, so it is the same split for
    every run of a study on the same data, whatever the study's own seed."""
    return int(hashlib.sha256(f"validation:{fingerprint}".encode()).hexdigest()[:8], 16)


def validation_size(train_size: int, share: float) -> int:
    """How many of `train_size` training examples become validation."""
    return min(max(round(share * train_size), min(VALIDATION_MIN, train_size // 3)), train_size - 1)


def choose_validation(labels: torch.Tensor | None, size: int, count: int, seed: int) -> torch.Tensor:
    """Sorted rows of the validation split: `count` of `size`, stratified by label where the
    labels are known (each class in proportion, at least one of every class that has two)."""
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        return torch.randperm(size, generator=generator)[:count].sort().values
    classes = [torch.nonzero(labels == label).flatten() for label in torch.unique(labels)]
    takes = _proportional([len(members) for members in classes], count, size)
    chosen = [members[torch.randperm(len(members), generator=generator)][:take] for members, take in zip(classes, takes)]
    return torch.cat(chosen).sort().values


def _proportional(sizes: list[int], count: int, total: int) -> list[int]:
    """Each class's share of `count`, in proportion to its size, summing to `count` (largest
    remainders round up; rounding each class alone can miss by one per class), and at least
    one of every class that has two."""
    quotas = [count * n / total for n in sizes]
    takes = [int(q) for q in quotas]
    by_remainder = sorted(range(len(sizes)), key=lambda c: (takes[c] - quotas[c], c))
    for c in by_remainder[:count - sum(takes)]:
        takes[c] += 1
    return [max(take, 1) if n >= 2 else 0 for take, n in zip(takes, sizes)]


def with_validation(splits: Any, share: float = VALIDATION_SHARE) -> Any:
    """`splits` with a validation split carved from its training split; its held-out split
    becomes `test`."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"validation_share = {share}: must be between 0 and 1")
    train = splits.train
    size = len(train)
    seed = split_seed(splits.fingerprint)
    chosen = choose_validation(_labels(train), size, validation_size(size, share), seed)
    keep = torch.ones(size, dtype=torch.bool)
    keep[chosen] = False
    kept = torch.nonzero(keep).flatten()
    indices = {"train": kept.tolist(), "validation": chosen.tolist(), "test": list(range(len(splits.val)))}
    source = splits.indices or {}
    if "source_train" in source:  # rows of the one array the data set is held in
        rows = torch.as_tensor(source["source_train"])
        indices.update(source_train=rows[kept].tolist(), source_validation=rows[chosen].tolist(),
                       source_test=list(source["source_test"]))
    digest = hashlib.sha256(repr((splits.fingerprint, indices["validation"])).encode()).hexdigest()[:16]
    facts = {"share": share, "size": len(chosen), "train_size": len(kept), "test_size": len(splits.val),
             "seed": seed, "digest": digest}
    # `splits` is a workloads.DataSplits (not imported here: workloads imports this module)
    return dataclasses.replace(splits, train=_take(train, kept), val=_take(train, chosen), test=splits.val,
                               fingerprint=f"{splits.fingerprint}:validation={share}", indices=indices,
                               validation=facts)


def cost_line(facts: dict) -> str:
    """One line saying what the validation split costs the training data."""
    total = facts["size"] + facts["train_size"]
    return (f"data: {facts['train_size']} training examples, {facts['size']} for validation ({facts['size'] / total:.0%} "
            f"of the {total} training examples: trials are judged on them, never trained on them), "
            f"{facts['test_size']} test (read once, when the search has ended)")
