"""The baseline: trained once and cached by content, or loaded from a checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import signal

import pytest
import torch

from slimtune.objectives import TrainingRecipe, WorkloadError, get_baseline
from slimtune.objectives.baseline import cache_key

CPU = torch.device("cpu")
ONE_EPOCH = TrainingRecipe(epochs=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SLIMTUNE_CACHE", str(folder))
    return folder / "baselines"


@pytest.fixture(scope="module")
def trained_state(digits_workload, tmp_path_factory):
    """One epoch of training on digits, in a cache of its own: (first, second, cache folder, its files)."""
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("baseline-cache")
    mp.setenv("SLIMTUNE_CACHE", str(folder))
    try:
        first = get_baseline(digits_workload, CPU, recipe=ONE_EPOCH)
        files_after_first = sorted(p.name for p in (folder / "baselines").iterdir())
        second = get_baseline(digits_workload, CPU, recipe=ONE_EPOCH)
    finally:
        mp.undo()
    return first, second, folder / "baselines", files_after_first


def test_first_call_trains_and_writes_the_cache(trained_state, digits_workload):
    first, _, folder, files = trained_state
    assert first.source.startswith("trained:")
    path = first.source.removeprefix("trained:")
    assert files == [f"{cache_key(digits_workload, ONE_EPOCH)}.pt"]
    assert str(folder / files[0]) == path
    assert first.train_seconds > 0
    assert not first.model.training
    assert all(p.device.type == "cpu" for p in first.model.parameters())


def test_second_call_loads_identical_weights_from_the_cache(trained_state):
    first, second, folder, files = trained_state
    assert second.source == "cache:" + str(folder / files[0])
    assert second.train_seconds == 0.0
    assert not second.model.training
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sorted(p.name for p in folder.iterdir()) == files  # nothing else written, no .tmp left


def test_one_epoch_already_learns_something(trained_state, digits_workload):
    model = trained_state[0].model
    inputs, labels = digits_workload.data.val.tensors
    with torch.no_grad():
        accuracy = (model(inputs).argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.5  # ten classes: chance is 0.1


@pytest.mark.parametrize("change", [{"epochs": 2}, {"batch_size": 32}, {"lr": 1e-3}, {"seed": 1}])
def test_a_changed_recipe_gets_another_cache_key(digits_workload, change):
    assert cache_key(digits_workload, dataclasses.replace(ONE_EPOCH, **change)) != cache_key(digits_workload, ONE_EPOCH)
    assert cache_key(digits_workload, TrainingRecipe(epochs=1)) == cache_key(digits_workload, ONE_EPOCH)


def test_another_workload_gets_another_cache_key(digits_workload):
    other = dataclasses.replace(digits_workload, model_spec="torchvision:resnet18")
    assert cache_key(other, ONE_EPOCH) != cache_key(digits_workload, ONE_EPOCH)


def test_a_changed_recipe_trains_again(trained_state, digits_workload, cache):
    first = trained_state[0]
    # Put the one-epoch result where this test's cache is: it must not be picked up for seed=1.
    cache.mkdir(parents=True)
    (cache / f"{cache_key(digits_workload, ONE_EPOCH)}.pt").write_bytes(
        (trained_state[2] / trained_state[3][0]).read_bytes()
    )
    other = get_baseline(digits_workload, CPU, recipe=dataclasses.replace(ONE_EPOCH, seed=1))
    assert other.source.startswith("trained:")
    assert other.source != first.source
    assert len(list(cache.iterdir())) == 2
    assert not all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                      other.model.state_dict().values()))


def test_missing_checkpoint_names_the_field(digits_workload, tmp_path):
    with pytest.raises(WorkloadError) as info:
        get_baseline(digits_workload, CPU, checkpoint=str(tmp_path / "missing.pt"))
    assert info.value.field == "baseline.checkpoint"


def test_checkpoint_of_another_model_names_the_field(digits_workload, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), path)
    with pytest.raises(WorkloadError) as info:
        get_baseline(digits_workload, CPU, checkpoint=str(path))
    assert info.value.field == "baseline.checkpoint"
    assert "does not fit" in str(info.value)


@pytest.mark.parametrize("wrap", [False, True], ids=["state_dict", "wrapped"])
def test_good_checkpoint_loads(trained_state, digits_workload, tmp_path, cache, wrap):
    state = trained_state[0].model.state_dict()
    path = tmp_path / "good.pt"
    torch.save({"state_dict": state} if wrap else state, path)
    loaded = get_baseline(digits_workload, CPU, checkpoint=str(path))
    assert loaded.source == f"checkpoint:{path}"
    assert not loaded.model.training
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not cache.exists()  # a checkpoint is neither trained nor cached


@pytest.mark.parametrize("content", ["text", "module"])
def test_a_file_that_is_no_state_dict_names_the_field(digits_workload, tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "text":
        path.write_text("not a checkpoint")
    else:
        torch.save(digits_workload.make_model(), path)
    with pytest.raises(WorkloadError) as info:
        get_baseline(digits_workload, CPU, checkpoint=str(path))
    assert info.value.field == "baseline.checkpoint"


@contextlib.contextmanager
def _hang_guard(seconds: float):
    """Turn a hang into an error (SIGALRM, main thread); not a timing assertion."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        return self.base[index]


@pytest.mark.parametrize("kind", ["tensors", "dataset"])
def test_training_batches_from_a_split_smaller_than_the_batch(kind):
    from slimtune.objectives.batching import training_batches

    data = torch.utils.data.TensorDataset(torch.randn(20, 1, 8, 8), torch.arange(20) % 10)
    if kind == "dataset":
        data = _ListDataset(data)
    with _hang_guard(2.0):
        inputs, labels = next(training_batches(data, 64, 0, CPU))
    assert len(inputs) == len(labels) > 0


def test_training_reports_each_epoch_with_loss_and_held_out_accuracy(digits_workload):
    from slimtune.objectives.baseline import TrainingRecipe, train

    lines: list[str] = []
    train(digits_workload, TrainingRecipe(epochs=2, batch_size=128), torch.device("cpu"), progress=lines.append)
    assert len(lines) == 2
    assert lines[0].startswith("baseline: epoch 1/2  loss ") and "held-out accuracy 0." in lines[0]
    assert lines[1].startswith("baseline: epoch 2/2")
