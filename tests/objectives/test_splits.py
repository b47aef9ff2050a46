"""Three splits (objectives/splits.py): validation carved from the training data, never
overlapping training or test, the same on every load; the test split read only by
`Evaluator.test_figures`, once the search has ended."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from slimtune.objectives import Budget, Evaluator, TrainingRecipe, get_baseline, load_workload
from slimtune.objectives.splits import VALIDATION_MIN, validation_size, with_validation
from slimtune.objectives.workloads import DataSplits
from slimtune.spaces import Recipe


@pytest.fixture(scope="module")
def digits_three():
    return load_workload("slimtune:small_cnn", "sklearn:digits", (1, 8, 8), validation_share=0.15)


def test_validation_and_test_never_overlap_each_other_or_training(digits_three) -> None:
    data = digits_three.data
    index = data.indices
    train, validation, test = (set(index[f"source_{name}"]) for name in ("train", "validation", "test"))
    assert not train & validation and not train & test and not validation & test  # by example index
    assert len(train | validation | test) == 1797  # every digit in exactly one split
    assert (len(data.train), len(data.val), len(data.test)) == (len(train), len(validation), len(test))
    assert len(validation) == round(0.15 * (len(train) + len(validation)))
    # the datasets hold exactly those rows of digits
    from slimtune.objectives.workloads import _digits_split

    images, labels, _, _ = _digits_split()
    for dataset, name in ((data.train, "train"), (data.val, "validation"), (data.test, "test")):
        rows = torch.tensor(index[f"source_{name}"])
        assert torch.equal(dataset.tensors[0], images[rows]) and torch.equal(dataset.tensors[1], labels[rows])
    # stratified: every class in proportion (within one example)
    for label in range(10):
        share = int((data.val.tensors[1] == label).sum()) / int((labels[torch.tensor(index["source_train"] + index["source_validation"])] == label).sum())
        assert share == pytest.approx(0.15, abs=0.03)
    assert data.validation["size"] == len(validation) and data.validation["test_size"] == len(test)


def test_the_split_is_fixed_by_the_data_and_keys_the_baseline(digits_three) -> None:
    again = load_workload("slimtune:small_cnn", "sklearn:digits", (1, 8, 8), validation_share=0.15)
    assert again.data.indices == digits_three.data.indices
    assert again.data.validation == digits_three.data.validation
    plain = load_workload("slimtune:small_cnn", "sklearn:digits", (1, 8, 8))
    assert plain.data.test is None and plain.data.fingerprint != digits_three.data.fingerprint  # another baseline
    other = load_workload("slimtune:small_cnn", "sklearn:digits", (1, 8, 8), validation_share=0.25)
    assert len(other.data.val) > len(digits_three.data.val)


def test_data_without_array_rows_is_split_by_index_with_a_minimum() -> None:
    features = torch.randn(400, 3)
    labels = torch.tensor([0] * 300 + [1] * 100)
    splits = with_validation(DataSplits(TensorDataset(features, labels), TensorDataset(features[:50], labels[:50]), 2,
                                        "toy"), 0.05)
    train, validation = set(splits.indices["train"]), set(splits.indices["validation"])
    assert not train & validation and len(train | validation) == 400
    assert len(validation) == validation_size(400, 0.05) == VALIDATION_MIN  # 5% would be 20
    assert torch.equal(splits.val.tensors[0], features[sorted(validation)])
    assert int(splits.val.tensors[1].sum()) == 25  # stratified: a quarter of class 1


@pytest.mark.parametrize("factory", ["data_with_targets", "data_without_targets"])
def test_a_user_data_factory_gets_a_validation_split_from_its_training_data(factory) -> None:
    """A factory's (train, val, classes): validation carved from train (stratified where the
    dataset says its `targets`), the factory's own held-out split kept whole as the test split."""
    workload = load_workload("slimtune:small_cnn", f"tests.search.user_factories:{factory}", (1, 8, 8),
                             validation_share=0.2)
    data = workload.data
    train, validation = set(data.indices["train"]), set(data.indices["validation"])
    assert not train & validation and len(train | validation) == 300
    assert len(data.val) == len(validation) == validation_size(300, 0.2) and len(data.test) == 60
    assert [data.test[i][1] for i in range(60)] == [(300 + i) % 3 for i in range(60)]  # the factory's own val
    assert [data.val[i][1] for i in range(len(data.val))] == [i % 3 for i in sorted(validation)]
    if factory == "data_with_targets":  # stratified by the labels it declares
        assert sorted(Counter(i % 3 for i in validation).values()) == [33, 33, 34]  # 100 in proportion, summing to 100
    again = load_workload("slimtune:small_cnn", f"tests.search.user_factories:{factory}", (1, 8, 8), validation_share=0.2)
    assert again.data.indices == data.indices  # the same split on every load


class CountingDataset(Dataset):
    """A test split that counts its reads (a TensorDataset would be read around __getitem__)."""

    def __init__(self, inner: TensorDataset):
        self.inner, self.reads = inner, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        self.reads += 1
        return self.inner[index]


def test_the_test_split_is_read_only_after_the_search(digits_three) -> None:
    spy = CountingDataset(digits_three.data.test)
    workload = dataclasses.replace(digits_three, data=dataclasses.replace(digits_three.data, test=spy))
    baseline = get_baseline(workload, torch.device("cpu"), recipe=TrainingRecipe(epochs=2)).model
    assert spy.reads == 0  # the baseline trains on the training part and never looks at test
    budget = Budget(finetune_steps=8, latency_repeats=6, latency_warmup=1, latency_max_s=0.2, trial_timeout_s=600.0)
    evaluator = Evaluator(workload, baseline, "cpu", batch_sizes=(64,), budget=budget, max_accuracy_drop=0.5)
    pruned = Recipe(prune_ratio=0.5, finetune_steps=8)
    measurement = evaluator.evaluate(pruned, seed=3)
    assert spy.reads == 0  # the search: baseline figures, a trial, the hopeless checks
    judged = measurement.judged_on
    assert judged["split"] == "validation" and judged["examples"] == len(workload.data.val)
    assert judged["accuracy_drop"] == pytest.approx(evaluator.baseline_accuracy - measurement.accuracy)
    low, high = judged["accuracy_drop_ci"]
    assert low <= judged["accuracy_drop"] <= high

    figures = evaluator.test_figures([pruned], [3])  # when the search has ended
    assert spy.reads == 2 * len(spy)  # the baseline and the point, once each
    point = figures["points"][0]
    assert figures["examples"] == len(spy) and point["examples"] == len(spy)
    assert point["validation_accuracy"] == pytest.approx(measurement.accuracy)  # rebuilt as the trial built it
    assert point["accuracy_drop"] == pytest.approx(figures["baseline_accuracy"] - point["accuracy"])


def test_the_test_split_reuses_the_points_the_confirmation_rebuilt(digits_three, monkeypatch) -> None:
    """At the end of a search the confirmation rebuilds each front point; the test split that
    follows scores those models instead of fine-tuning each point once more, and the same figures
    come out as from a build of its own."""
    from slimtune.objectives.confirm import confirm_candidates

    baseline = get_baseline(digits_three, torch.device("cpu"), recipe=TrainingRecipe(epochs=2)).model
    budget = Budget(finetune_steps=8, latency_repeats=6, latency_warmup=1, latency_max_s=0.2, trial_timeout_s=600.0)
    evaluator = Evaluator(digits_three, baseline, "cpu", batch_sizes=(64,), budget=budget)
    pruned = Recipe(prune_ratio=0.5, finetune_steps=8)
    own = evaluator.test_figures([pruned], [3])["points"][0]
    builds = []
    build = evaluator.build
    monkeypatch.setattr(evaluator, "build", lambda *args, **kwargs: builds.append(args) or build(*args, **kwargs))
    confirm_candidates(evaluator, [pruned.to_dict()], [3], rounds=1)
    shared = evaluator.test_figures([pruned], [3])["points"][0]
    assert len(builds) == 1  # the confirmation's
    assert shared == own
    evaluator.test_figures([pruned], [3])
    assert len(builds) == 2  # a kept build serves once
    confirm_candidates(evaluator, [pruned.to_dict()], [4], rounds=1)
    evaluator.test_figures([pruned], [3])
    assert len(builds) == 4  # another seed is another model: built again
