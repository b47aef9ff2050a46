"""`data = "elpv"` on the real `elpv-dataset` package (the `elpv` extra, in `test`): split sizes,
stratification, seeds, labels, channel handling, the array file a GPU machine reads instead,
and the error when the package is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slimtune.objectives import WorkloadError, load_workload
from slimtune.objectives.batching import eval_batches, training_batches
from slimtune.objectives.workloads import ELPV_LEVELS, load_data

pytest.importorskip("elpv_dataset", reason="the elpv extra (pip install -e '.[elpv]')")

SIZE = 16  # tiny: the tests are about the split and the shapes, not the pictures


@pytest.fixture(scope="session")
def elpv_package():
    """The package's own arrays, read once (13 s on a loaded machine: 2,624 PNGs of 300x300)."""
    from elpv_dataset.utils import load_dataset

    images, probs, _ = load_dataset()
    return images, probs


@pytest.fixture(scope="session")
def elpv_file(elpv_package, tmp_path_factory) -> Path:
    """The package's images resized to SIZE as benchmarks/elpv_array.py writes them."""
    images, probs = elpv_package
    pixels = torch.from_numpy(images).unsqueeze(1).float()
    small = torch.nn.functional.interpolate(pixels, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    path = tmp_path_factory.mktemp("elpv") / f"elpv-{SIZE}.npz"
    np.savez_compressed(path, images=small.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy(), probs=probs)
    return path


def _levels(probs: np.ndarray) -> np.ndarray:
    return np.abs(probs[:, None] - np.array(ELPV_LEVELS)).argmin(axis=1)


def test_binary_split_from_the_package_holds_out_a_stratified_quarter(elpv_package):
    _, probs = elpv_package
    data = load_workload("slimtune:strided_cnn", "elpv", (1, SIZE, SIZE)).data
    assert (len(data.train), len(data.val), data.num_classes) == (1968, 656, 2)
    train_x, train_y = data.train.tensors
    val_x, val_y = data.val.tensors
    assert train_x.shape == (1968, 1, SIZE, SIZE) and val_x.shape == (656, 1, SIZE, SIZE)
    assert -1.0 <= float(train_x.min()) and float(train_x.max()) <= 1.0
    defective = int((_levels(probs) >= 2).sum())  # probability 2/3 or 1
    assert defective == 821 and int(train_y.sum() + val_y.sum()) == defective
    # stratified on the four levels: each split holds the same share of defective cells
    assert abs(float(val_y.float().mean()) - defective / 2624) < 0.002
    assert abs(float(train_y.float().mean()) - defective / 2624) < 0.002


def test_four_classes_seeds_and_the_held_out_split_never_in_training(elpv_file, elpv_package):
    _, probs = elpv_package
    counts = np.bincount(_levels(probs), minlength=4)
    four = load_data("elpv:4class", (1, SIZE, SIZE), str(elpv_file))
    assert four.num_classes == 4
    val_counts = np.bincount(four.val.tensors[1].numpy(), minlength=4)
    assert np.all(np.abs(val_counts - counts / 4) <= 1)  # a quarter of every level

    again = load_data("elpv:4class", (1, SIZE, SIZE), str(elpv_file))
    assert torch.equal(again.val.tensors[0], four.val.tensors[0]) and again.fingerprint == four.fingerprint
    other = load_data("elpv:4class:seed=1", (1, SIZE, SIZE), str(elpv_file))
    assert not torch.equal(other.val.tensors[0], four.val.tensors[0])
    assert other.fingerprint != four.fingerprint  # another baseline cache entry
    assert np.array_equal(np.bincount(other.val.tensors[1].numpy(), minlength=4), val_counts)

    # every image goes to exactly one split: the two splits together are the whole set, once
    rows = lambda x: {row.numpy().tobytes() for row in x.flatten(1)}  # noqa: E731
    everything = load_data("elpv:4class", (1, SIZE, SIZE), str(elpv_file))
    train_rows, val_rows = rows(everything.train.tensors[0]), rows(everything.val.tensors[0])
    duplicates = 2624 - len(rows(torch.cat([everything.train.tensors[0], everything.val.tensors[0]])))
    assert len(train_rows & val_rows) <= duplicates


def test_grey_repeated_to_three_channels_and_resized_on_the_way(elpv_file):
    data = load_data("elpv", (3, 2 * SIZE, 2 * SIZE), str(elpv_file))
    inputs, labels, real = next(eval_batches(data.val, 8, torch.device("cpu")))
    assert inputs.shape == (8, 3, 2 * SIZE, 2 * SIZE) and real == 8
    assert torch.equal(inputs[:, 0], inputs[:, 1]) and torch.equal(inputs[:, 0], inputs[:, 2])
    batch, _ = next(training_batches(data.train, 4, 0, torch.device("cpu")))
    assert batch.shape == (4, 3, 2 * SIZE, 2 * SIZE)
    grey = load_data("elpv", (1, 2 * SIZE, 2 * SIZE), str(elpv_file))
    assert torch.allclose(grey.val.tensors[0][:8, 0], inputs[:, 0])



def test_flips_flip_training_images_only_each_on_its_own_and_replay_by_seed(elpv_file):
    plain = load_data("elpv", (1, SIZE, SIZE), str(elpv_file))
    flipped = load_data("elpv:flips", (1, SIZE, SIZE), str(elpv_file))
    assert flipped.fingerprint != plain.fingerprint  # a baseline trained with flips is another baseline
    cpu = torch.device("cpu")
    # the same seed draws the same order, so each batch holds the same images, some of them flipped
    ours, labels = next(training_batches(flipped.train, 64, 3, cpu))
    theirs, same_labels = next(training_batches(plain.train, 64, 3, cpu))
    assert torch.equal(labels, same_labels)
    kinds = [next(k for k, view in enumerate((a, a.flip(-1), a.flip(-2), a.flip(-1).flip(-2))) if torch.equal(b, view))
             for a, b in zip(theirs, ours)]
    assert len(set(kinds)) >= 3  # not one flip for the whole batch
    again, _ = next(training_batches(flipped.train, 64, 3, cpu))
    assert torch.equal(again, ours)
    held_out, _, _ = next(eval_batches(flipped.val, 64, cpu))
    plain_held_out, _, _ = next(eval_batches(plain.val, 64, cpu))
    assert torch.equal(held_out, plain_held_out)

@pytest.mark.parametrize("spec, shape, field", [
    ("elpv:3class", (1, SIZE, SIZE), "workload.data"),
    ("elpv:seed=x", (1, SIZE, SIZE), "workload.data"),
    ("elpv:flip", (1, SIZE, SIZE), "workload.data"),
    ("elpv", (2, SIZE, SIZE), "workload.input_shape"),
    ("elpv", (SIZE, SIZE), "workload.input_shape"),
])
def test_bad_specs_and_shapes_name_the_field(spec, shape, field, elpv_file):
    with pytest.raises(WorkloadError) as info:
        load_data(spec, shape, str(elpv_file))
    assert info.value.field == field


def test_a_missing_package_names_the_extra_and_a_bad_array_file_the_script(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "elpv_dataset.utils", None)  # what Python does when it is not installed
    with pytest.raises(WorkloadError) as info:
        load_data("elpv", (1, SIZE, SIZE))
    assert info.value.field == "workload.data" and "slimtune[elpv]" in str(info.value)
    (tmp_path / "wrong.npz").write_bytes(b"not an array file")
    with pytest.raises(WorkloadError) as info:
        load_data("elpv", (1, SIZE, SIZE), str(tmp_path / "wrong.npz"))
    assert info.value.field == "workload.data_root" and "elpv_array.py" in str(info.value)
