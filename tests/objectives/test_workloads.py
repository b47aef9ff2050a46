"""Workloads named by strings: built-in data and models, user factories, image folders, errors."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
import torch
from PIL import Image

from slimtune.objectives import WorkloadError, load_workload
from slimtune.objectives.workloads import load_data, model_factory


def test_digits_splits(digits_workload):
    data = digits_workload.data
    assert (len(data.train), len(data.val)) == (1437, 360)
    assert data.num_classes == digits_workload.num_classes == 10
    train_x, train_y = data.train.tensors
    val_x, val_y = data.val.tensors
    assert train_x.shape == (1437, 1, 8, 8) and val_x.shape == (360, 1, 8, 8)
    assert set(train_y.tolist()) == set(val_y.tolist()) == set(range(10))
    train_rows = {tuple(row.tolist()) for row in train_x.flatten(1)}
    val_rows = {tuple(row.tolist()) for row in val_x.flatten(1)}
    assert len(train_rows) == 1437 and len(val_rows) == 360  # digits has no duplicate images
    assert not train_rows & val_rows
    # Inputs are normalised to [-1, 1].
    assert train_x.min() >= -1.0 and train_x.max() <= 1.0


def test_digits_split_is_the_same_every_time(digits_workload):
    again = load_data("sklearn:digits", (1, 8, 8))
    assert torch.equal(again.val.tensors[0], digits_workload.data.val.tensors[0])
    assert torch.equal(again.train.tensors[1], digits_workload.data.train.tensors[1])
    assert again.fingerprint == digits_workload.data.fingerprint


def test_digits_are_read_from_the_cache_without_importing_scikit_learn(tmp_path, digits_workload):
    """The first load prepares the split and caches it; a later worker process reads it back,
    identical, and never pays for importing scikit-learn. A damaged entry is prepared again."""
    script = textwrap.dedent("""
        import sys, torch
        from slimtune.objectives.workloads import load_data
        data = load_data("sklearn:digits", (1, 8, 8))
        torch.save({"val": data.val.tensors[0], "train_y": data.train.tensors[1], "fingerprint": data.fingerprint},
                   sys.argv[1])
        print("sklearn" in sys.modules)
    """)
    env = {**os.environ, "SLIMTUNE_CACHE": str(tmp_path / "cache")}

    def load(name: str) -> tuple[bool, dict]:
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], env=env, check=True,
                             capture_output=True, text=True).stdout
        return out.strip() == "True", torch.load(tmp_path / name)

    imported_first, first = load("first.pt")
    imported_again, again = load("again.pt")
    assert imported_first and not imported_again
    for data in (first, again):
        assert torch.equal(data["val"], digits_workload.data.val.tensors[0])
        assert torch.equal(data["train_y"], digits_workload.data.train.tensors[1])
        assert data["fingerprint"] == digits_workload.data.fingerprint
    [entry] = (tmp_path / "cache" / "data").iterdir()
    entry.write_bytes(b"not a tensor file")
    imported, damaged = load("damaged.pt")
    assert imported and torch.equal(damaged["val"], first["val"])


def test_digits_builtin_model_runs(digits_workload):
    model = digits_workload.make_model().eval()
    assert model(digits_workload.data.val.tensors[0][:4]).shape == (4, 10)


@pytest.mark.parametrize("shape", [(2, 8, 8), (8, 8), (4, 32, 32)])
def test_digits_with_an_impossible_input_shape_names_the_field(shape):
    with pytest.raises(WorkloadError) as info:
        load_workload("slimtune:small_cnn", "sklearn:digits", shape)
    assert info.value.field == "workload.input_shape"


def test_digits_served_at_224_resized_with_repeated_channels():
    from slimtune.objectives.batching import eval_batches, training_batches

    small = load_workload("slimtune:small_cnn", "sklearn:digits", (1, 8, 8))
    large = load_workload("torchvision:resnet18", "sklearn:digits", (3, 224, 224))
    assert len(large.data.train) == len(small.data.train) and len(large.data.val) == len(small.data.val)
    assert large.data.fingerprint != small.data.fingerprint  # another baseline cache entry
    inputs, labels, real = next(eval_batches(large.data.val, 4, torch.device("cpu")))
    assert inputs.shape == (4, 3, 224, 224) and real == 4
    assert torch.equal(inputs[:, 0], inputs[:, 2])  # grey repeated into three channels
    assert torch.equal(labels, small.data.val.tensors[1][:4])
    # bilinear resizing keeps the image: its mean stays close to the 8x8 original's
    assert inputs[0].mean().item() == pytest.approx(small.data.val.tensors[0][0].mean().item(), abs=0.05)
    train_inputs, _ = next(training_batches(large.data.train, 8, 0, torch.device("cpu")))
    assert train_inputs.shape == (8, 3, 224, 224)
    assert large.data.val[0][0].shape == (3, 224, 224)


def test_torchvision_resnet18_adapted_to_one_channel():
    torch.manual_seed(0)
    model = model_factory("torchvision:resnet18", 10, (1, 32, 32))()
    assert model.conv1.in_channels == 1
    assert model.conv1.out_channels == 64
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "spec", ["slimtune:no_such_model", "torchvision:no_such_net", "no_such_package_1b2c.module:build", "justaname"]
)
def test_bad_model_spec_names_the_model_field(spec):
    with pytest.raises(WorkloadError) as info:
        model_factory(spec, 10, (1, 8, 8))
    assert info.value.field == "workload.model"
    assert str(info.value).startswith("workload.model: ")


def test_bad_model_spec_fails_in_load_workload_too():
    with pytest.raises(WorkloadError) as info:
        load_workload("no_such_package_1b2c.module:build", "sklearn:digits", (1, 8, 8))
    assert info.value.field == "workload.model"


def test_unimportable_data_factory_names_the_data_field():
    with pytest.raises(WorkloadError) as info:
        load_data("no_such_package_1b2c.module:data", (1, 8, 8))
    assert info.value.field == "workload.data"


def test_cifar10_without_data_root(tmp_path):
    with pytest.raises(WorkloadError) as info:
        load_workload("slimtune:small_cnn", "torchvision:CIFAR10", (3, 32, 32))
    assert info.value.field == "workload.data_root"
    with pytest.raises(WorkloadError) as info:
        load_workload("slimtune:small_cnn", "torchvision:CIFAR10", (3, 32, 32), data_root=str(tmp_path / "missing"))
    assert info.value.field == "workload.data_root"


def test_cifar10_in_an_empty_folder_is_not_downloaded(tmp_path):
    with pytest.raises(WorkloadError) as info:
        load_workload("slimtune:small_cnn", "torchvision:CIFAR10", (3, 32, 32), data_root=str(tmp_path))
    assert info.value.field == "workload.data_root"
    assert list(tmp_path.iterdir()) == []  # nothing fetched or written


def test_unknown_torchvision_dataset_names_the_data_field(tmp_path):
    with pytest.raises(WorkloadError) as info:
        load_data("torchvision:NoSuchSet", (3, 32, 32), str(tmp_path))
    assert info.value.field == "workload.data"


def _write_module(tmp_path, monkeypatch, body: str) -> str:
    name = f"user_workload_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_factories_for_model_and_data(tmp_path, monkeypatch):
    module = _write_module(tmp_path, monkeypatch, """
        import torch
        from torch import nn
        from torch.utils.data import TensorDataset

        calls = []

        def model(num_classes, input_shape):
            calls.append((num_classes, tuple(input_shape)))
            return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes))

        def data():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(30, 2, 4, 4, generator=g)
            y = torch.arange(30) % 3
            return TensorDataset(x[:24], y[:24]), TensorDataset(x[24:], y[24:]), 3
    """)
    workload = load_workload(f"{module}:model", f"{module}:data", (2, 4, 4))
    assert workload.num_classes == 3
    assert (len(workload.data.train), len(workload.data.val)) == (24, 6)
    net = workload.make_model()
    assert net(torch.randn(5, 2, 4, 4)).shape == (5, 3)
    # once by load_workload's check (a factory that fails is a one-line error up front), once here
    assert importlib.import_module(module).calls == [(3, (2, 4, 4))] * 2


def test_user_data_factory_with_a_wrong_return_names_the_data_field(tmp_path, monkeypatch):
    module = _write_module(tmp_path, monkeypatch, """
        def data():
            return [1, 2]
    """)
    with pytest.raises(WorkloadError) as info:
        load_data(f"{module}:data", (1, 8, 8))
    assert info.value.field == "workload.data"


def test_user_module_without_the_function_names_the_field(tmp_path, monkeypatch):
    module = _write_module(tmp_path, monkeypatch, "x = 1\n")
    with pytest.raises(WorkloadError) as info:
        model_factory(f"{module}:model", 10, (1, 8, 8))
    assert info.value.field == "workload.model"


def _write_pngs(root, classes: dict[str, int], size: int = 6) -> None:
    for index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            color = (40 * index + 10 * i, 255 - 30 * index, 7 * i)
            Image.new("RGB", (size, size + i % 3), color).save(folder / f"{i}.png")


def test_imagefolder_split_automatically(tmp_path):
    _write_pngs(tmp_path / "images", {"cat": 5, "dog": 5, "owl": 5})
    workload = load_workload("slimtune:small_cnn", f"imagefolder:{tmp_path / 'images'}", (1, 8, 8))
    assert workload.num_classes == 3
    assert (len(workload.data.train), len(workload.data.val)) == (12, 3)
    image, label = workload.data.train[0]
    assert image.shape == (1, 8, 8) and 0 <= label < 3
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert workload.make_model()(image.unsqueeze(0)).shape == (1, 3)


def test_imagefolder_with_train_and_val_folders(tmp_path):
    _write_pngs(tmp_path / "train", {"a": 3, "b": 2, "c": 2, "d": 2})
    _write_pngs(tmp_path / "val", {"a": 1, "b": 1, "c": 1, "d": 1})
    data = load_data(f"imagefolder:{tmp_path}", (3, 16, 16))
    assert data.num_classes == 4
    assert (len(data.train), len(data.val)) == (9, 4)
    assert data.val[0][0].shape == (3, 16, 16)


def test_imagefolder_that_is_not_a_folder(tmp_path):
    with pytest.raises(WorkloadError) as info:
        load_data(f"imagefolder:{tmp_path / 'nothing'}", (1, 8, 8))
    assert info.value.field == "workload.data"


@pytest.mark.parametrize(
    "model, data, message",
    [
        pytest.param("tests.search.user_factories:raising_model", "sklearn:digits",
                     "workload.model: the model factory 'tests.search.user_factories:raising_model' raised "
                     "RuntimeError: weights file models/best.pt is missing", id="model factory raises"),
        pytest.param("slimtune:small_cnn", "tests.search.user_factories:data_on_an_unmounted_folder",
                     "workload.data: the data factory 'tests.search.user_factories:data_on_an_unmounted_folder' raised "
                     "FileNotFoundError: [Errno 2] No such file or directory: '/mnt/unmounted/digits/train.csv'",
                     id="data factory raises FileNotFoundError"),
        pytest.param("slimtune:small_cnn", "tests.search.user_factories:data_as_a_list",
                     "workload.data: the data factory 'tests.search.user_factories:data_as_a_list' returned a list of "
                     "100 items; it must return (train_dataset, val_dataset, num_classes)", id="data as a list"),
        pytest.param("os.path:join", "sklearn:digits",
                     "workload.model: the model factory 'os.path:join' raised TypeError: join() got an unexpected "
                     "keyword argument 'num_classes'", id="a standard library function as the model"),
        pytest.param("slimtune:small_cnn", "json:dumps",
                     "workload.data: the data factory 'json:dumps' raised TypeError: dumps() missing 1 required "
                     "positional argument: 'obj'", id="a standard library function as the data"),
        pytest.param("tests.search.user_factories:data_as_a_list", "sklearn:digits",
                     "workload.model: the model factory 'tests.search.user_factories:data_as_a_list' raised "
                     "TypeError: data_as_a_list() got an unexpected keyword argument 'num_classes'",
                     id="the data factory as the model"),
        pytest.param("torchvision:vit_b_16", "sklearn:digits",
                     "workload.model: 'torchvision:vit_b_16' cannot run a batch of input_shape [1, 8, 8]: "
                     "AssertionError: Wrong image height! Expected 224 but got 8!", id="a model that cannot take the shape"),
    ],
)
def test_a_failing_factory_is_one_line_naming_the_field_the_factory_and_the_exception(model, data, message):
    with pytest.raises(WorkloadError) as info:
        load_workload(model, data, (1, 8, 8))
    assert str(info.value) == message
    assert "\n" not in str(info.value)
    if "raised" in message:  # the user's code's own traceback, for --verbose
        assert info.value.traceback.startswith("Traceback (most recent call last):")


def test_a_model_factory_returning_something_else_than_a_module(tmp_path, monkeypatch):
    module = _write_module(tmp_path, monkeypatch, """
        def model(num_classes, input_shape):
            return {"layers": 3}
    """)
    with pytest.raises(WorkloadError, match=f"the model factory '{module}:model' returned a dict, not a torch.nn.Module"):
        load_workload(f"{module}:model", "sklearn:digits", (1, 8, 8))
