"""Refine's best-step selection: the held-back share of the training images (stratified,
disjoint, fixed), and the evaluator keeping the best-scoring step on it, never training on it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from slimtune.objectives import Budget, Evaluator
from slimtune.objectives.accuracy import accuracy_scores
from slimtune.objectives import evaluator as evaluator_module
from slimtune.objectives.batching import ResizedTensorDataset
from slimtune.objectives.selection import SELECTION_CHECKS, SELECTION_SHARE, BestStep, hold_back
from slimtune.spaces import Recipe


def _imbalanced(n0: int = 200, n1: int = 100) -> TensorDataset:
    labels = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(n1, dtype=torch.long)])
    return TensorDataset(torch.arange(n0 + n1, dtype=torch.float32).reshape(-1, 1), labels)


def _ids(dataset: Dataset) -> set[int]:
    return {int(dataset[i][0].flatten()[0]) for i in range(len(dataset))}


def test_hold_back_is_stratified_disjoint_and_fixed():
    data = _imbalanced()
    train, held = hold_back(data, 0.2)
    assert _ids(train).isdisjoint(_ids(held)) and _ids(train) | _ids(held) == set(range(300))
    assert held.tensors[1].bincount().tolist() == [40, 20]  # 20% of each class
    again_train, again_held = hold_back(data, 0.2)
    assert _ids(again_held) == _ids(held)  # every refined point and its export see the same split
    assert _ids(hold_back(data, 0.2, seed=1)[1]) != _ids(held)


def test_hold_back_keeps_in_memory_data_in_memory_and_serves_the_same_shape():
    data = ResizedTensorDataset(torch.rand(40, 1, 8, 8), torch.arange(40) % 4, (3, 16, 16))
    train, held = hold_back(data)
    assert type(train) is type(held) is ResizedTensorDataset
    assert held[0][0].shape == (3, 16, 16) and len(held) == 4 * round(SELECTION_SHARE * 10)


def test_hold_back_reads_a_subsets_labels_and_splits_unlabelled_data_plainly():
    subset = Subset(_imbalanced(), list(range(0, 300, 2)))  # 100 of class 0, 50 of class 1
    train, held = hold_back(subset, 0.2)
    assert isinstance(held, Subset) and sorted(int(held[i][1]) for i in range(len(held))) == [0] * 20 + [1] * 10

    class Unlabelled(Dataset):
        def __len__(self):
            return 50

        def __getitem__(self, index):
            return torch.tensor([float(index)]), 0

    train, held = hold_back(Unlabelled(), 0.1)
    assert len(held) == 5 and len(train) == 45 and _ids(train).isdisjoint(_ids(held))
    with pytest.raises(ValueError, match="share"):
        hold_back(_imbalanced(), 1.0)


def test_best_step_restores_the_best_weights_and_keeps_the_earlier_of_equals():
    model = nn.Linear(2, 1)
    best = BestStep("accuracy")
    for step, (value, score) in enumerate([(1.0, 0.5), (2.0, 0.9), (3.0, 0.9), (4.0, 0.1)], start=1):
        nn.init.constant_(model.weight, value)
        best.offer(model, step, score)
    best.restore(model)
    assert model.weight.flatten().tolist() == [2.0, 2.0] and (best.step, best.score) == (2, 0.9)
    assert best.facts(4)["selection_curve"] == [[1, 0.5], [2, 0.9], [3, 0.9], [4, 0.1]]


# a fine-tune that teaches every image is a 0 (the spy below relabels the batches) loses held-back
# accuracy step by step, whatever the machine's arithmetic, so the kept step is not the last one
UNLEARNING = Budget(finetune_steps=20, finetune_lr=0.001, latency_repeats=5, latency_warmup=1, latency_max_s=0.5,
                    trial_timeout_s=600.0, keep_best="accuracy")
LIGHTLY_PRUNED = Recipe(prune_ratio=0.1, finetune_steps=20)


def test_the_evaluator_keeps_the_best_step_on_held_back_training_images(digits_workload, digits_baseline, monkeypatch):
    trained_on = []
    real = evaluator_module.training_batches

    def spy(dataset, *args, **kwargs):
        trained_on.append(dataset)
        return ((inputs, torch.zeros_like(labels)) for inputs, labels in real(dataset, *args, **kwargs))

    monkeypatch.setattr(evaluator_module, "training_batches", spy)
    evaluator = Evaluator(digits_workload, digits_baseline, "cpu", batch_sizes=(64,), budget=UNLEARNING)
    candidate = evaluator.build(LIGHTLY_PRUNED, seed=0)
    train, held = evaluator._selection_split()
    assert trained_on == [train] and len(train) + len(held) == len(digits_workload.data.train)

    facts = candidate.record
    curve = facts["selection_curve"]
    assert [s for s, _ in curve] == list(range(1, 21)) and len(curve) == SELECTION_CHECKS  # 19 checks + the last
    best = max(v for _, v in curve)  # the curve is stored to 6 digits
    assert facts["selection_score"] == pytest.approx(best, abs=1e-6) and best > curve[-1][1]  # the last was not the best
    assert facts["selected_step"] == next(s for s, v in curve if v == best) < 20
    assert facts["finetune_steps_run"] == 20
    kept = accuracy_scores(candidate.model, held, 64, torch.device("cpu")).accuracy
    assert kept == pytest.approx(facts["selection_score"], abs=1e-6)  # the measured model is the kept step


def test_without_keep_best_the_search_trains_on_every_training_image(digits_workload, digits_baseline, monkeypatch):
    trained_on = []
    real = evaluator_module.training_batches
    monkeypatch.setattr(evaluator_module, "training_batches",
                        lambda dataset, *a, **k: trained_on.append(dataset) or real(dataset, *a, **k))
    evaluator = Evaluator(digits_workload, digits_baseline, "cpu", batch_sizes=(64,),
                          budget=dataclasses.replace(UNLEARNING, keep_best=None))
    measurement = evaluator.evaluate(LIGHTLY_PRUNED, seed=0)
    assert trained_on == [digits_workload.data.train]
    assert "selected_step" not in measurement.build and measurement.finetune_steps_run == 20
