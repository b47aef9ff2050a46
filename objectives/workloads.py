"""A workload is model + data + metric, named by strings in the study file.

Models: `slimtune:<builtin>`, `torchvision:<name>` (classes and input channels adapted),
`hf:minilm` / `hf:PATH` (a Hugging Face encoder checkpoint, objectives/text.py), or
`package.module:function` called as `function(num_classes=..., input_shape=...)`.
Data: `sklearn:digits` (ships with scikit-learn), `torchvision:CIFAR10` and friends from a
local `data_root` (never downloaded), `imagefolder:PATH`, `elpv` / `elpv:4class` (solar-cell
defects from the optional `elpv-dataset` package; objectives/elpv.py), or `package.module:function`
returning `(train_dataset, val_dataset, num_classes)`; text: `reviews:rotten_tomatoes`,
`reviews:imdb`, `textcsv:PATH` (objectives/text.py), whose `input_shape` is `[seq_len]`. The metrics are top-1 and balanced accuracy.
"""

from __future__ import annotations

import hashlib
import importlib
import operator
import os
import traceback
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from .batching import ResizedTensorDataset
from .models import BUILTIN_MODELS


class WorkloadError(ValueError):
    """A model or dataset the study names cannot be had; `field` says which one. `traceback`
    holds the user's code's own traceback when a factory raised (shown with `--verbose`)."""

    def __init__(self, field: str, message: str, traceback: str | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.traceback = traceback


def _factory_failed(field: str, role: str, spec: str, error: BaseException) -> WorkloadError:
    """A user's factory raised: one line naming the field, the factory and the exception."""
    from slimtune.spaces.errors import one_line

    return WorkloadError(field, f"the {role} factory {spec!r} raised {one_line(error)}",
                         "".join(traceback.format_exception(error)))


@dataclass
class DataSplits:
    """`train` is what fine-tuning sees; `val` is the split trials are judged on (constraint,
    hopeless test, objectives, screen), never trained on. A loader returns two splits (train and
    held-out); `objectives/splits.py` then carves a validation split from the training data
    (`with_validation`): `val` becomes that validation split and the loader's held-out split
    becomes `test`, read only once the search has ended. `test` is None where no validation split
    was carved (then `val` is the loader's held-out split, as before).

    `indices`, where known, names the examples of each split: "train"/"validation" as rows of
    the loader's training split (and "test" as rows of its held-out split), or, for data held in
    one array (digits, ELPV), rows of that array under "source_*" names."""

    train: Dataset
    val: Dataset
    num_classes: int
    fingerprint: str
    test: Dataset | None = None
    indices: dict[str, list[int]] | None = None
    #: the validation split's facts (share, size, seed, digest of its rows), stored with a study
    validation: dict | None = None


@dataclass
class Workload:
    model_spec: str
    data_spec: str
    input_shape: tuple[int, ...]
    data: DataSplits
    make_model: Callable[[], nn.Module]
    #: text workloads: the tokenizer's vocabulary; the model takes token ids [batch, seq_len]
    vocab_size: int | None = None

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def example(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A seeded batch as the model takes it in float32: images from a normal distribution,
        token ids drawn from the vocabulary (objectives/text.example_tokens says which)."""
        generator = generator or torch.Generator().manual_seed(batch_size)
        return example_batch(batch_size, self.input_shape, self.vocab_size, generator)


def example_batch(batch_size: int, input_shape: tuple[int, ...], vocab_size: int | None,
                  generator: torch.Generator) -> torch.Tensor:
    if vocab_size is not None:
        from .text import example_tokens

        return example_tokens(batch_size, input_shape[0], vocab_size, generator)
    return torch.randn(batch_size, *input_shape, generator=generator)


def _import_function(spec: str, field: str) -> Callable:
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise WorkloadError(field, f"{spec!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        from slimtune.spaces.errors import one_line

        raise WorkloadError(field, f"cannot import module {module_name!r} ({one_line(error)})",
                            "".join(traceback.format_exception(error))) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise WorkloadError(field, f"module {module_name!r} has no function {function_name!r}")
    return function


def _adapt_input_channels(model: nn.Module, channels: int) -> None:
    """torchvision models expect RGB; swap the first convolution for one taking `channels`."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != channels:
                    setattr(parent, name, nn.Conv2d(
                        channels, child.out_channels, child.kernel_size, child.stride,
                        child.padding, child.dilation, child.groups, child.bias is not None,
                    ))
                return


def _text_error(error: Exception) -> WorkloadError:
    return WorkloadError(error.field, error.message)


def model_factory(spec: str, num_classes: int, input_shape: tuple[int, ...]) -> Callable[[], nn.Module]:
    """Resolve a model spec now (so a bad one fails before the study exists); build later."""
    namespace, _, name = spec.partition(":")
    if namespace == "hf":
        from .text import TextWorkloadError, hf_model_factory

        if len(input_shape) != 1:
            raise WorkloadError("workload.input_shape", f"a Hugging Face text model takes [seq_len] (e.g. [64]), "
                                f"not {list(input_shape)}")
        try:
            return hf_model_factory(name, num_classes, input_shape[0])
        except TextWorkloadError as error:
            raise _text_error(error) from None
    if namespace == "slimtune":
        if name not in BUILTIN_MODELS:
            raise WorkloadError("workload.model", f"unknown built-in {name!r}; allowed: {sorted(BUILTIN_MODELS)}")
        return lambda: BUILTIN_MODELS[name](num_classes=num_classes, input_shape=input_shape)
    if namespace == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise WorkloadError("workload.model", f"torchvision has no classification model {name!r}")

        def build() -> nn.Module:
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
            _adapt_input_channels(model, input_shape[0])
            return model

        return build
    function = _import_function(spec, "workload.model")
    return lambda: function(num_classes=num_classes, input_shape=input_shape)


def _tensor_fingerprint(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _digits_split() -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Digits' images (normalised to [-1, 1]), labels and the fixed split's indices.

    Read from the cache after the first time: importing scikit-learn costs every worker
    process about 1.4 s of CPU, more than the rest of reading the data, and a study starts a
    worker per GPU and again after every crash. The entry is keyed by scikit-learn's version,
    which decides both the data and the split."""
    from importlib.metadata import version

    from .cache import cache_root, save_atomically

    path = cache_root() / "data" / f"sklearn-digits-{version('scikit-learn')}.pt"
    try:
        cached = torch.load(path, weights_only=True)
        return cached["images"], cached["labels"], cached["train"], cached["val"]
    except Exception:  # absent or damaged (torch.load raises many types): prepared again below
        pass
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - 0.5) / 0.5
    labels = torch.tensor(digits.target, dtype=torch.long)
    # A fixed split, independent of the study seed, so studies on digits are comparable.
    train_idx, val_idx = map(list, train_test_split(
        range(len(labels)), test_size=0.2, random_state=0, stratify=digits.target
    ))
    save_atomically({"images": images, "labels": labels, "train": train_idx, "val": val_idx}, path)
    return images, labels, train_idx, val_idx


def _sklearn_digits(input_shape: tuple[int, ...]) -> DataSplits:
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise WorkloadError(
            "workload.input_shape", f"sklearn:digits needs [1 or 3, H, W] (e.g. [1, 8, 8], [3, 224, 224]), not {list(input_shape)}"
        )
    images, labels, train_idx, val_idx = _digits_split()
    fingerprint = "sklearn:digits:" + _tensor_fingerprint(images, labels)[:16]
    source = {"source_train": list(train_idx), "source_test": list(val_idx)}
    if tuple(input_shape) == (1, 8, 8):
        return DataSplits(TensorDataset(images[train_idx], labels[train_idx]),
                          TensorDataset(images[val_idx], labels[val_idx]), 10, fingerprint, indices=source)
    # Stored at 8x8, served resized (and with repeated channels) batch by batch on the device.
    train = ResizedTensorDataset(images[train_idx], labels[train_idx], input_shape)
    val = ResizedTensorDataset(images[val_idx], labels[val_idx], input_shape)
    return DataSplits(train, val, 10, f"{fingerprint}:{'x'.join(map(str, input_shape))}", indices=source)


def _image_transform(input_shape: tuple[int, ...]):
    from torchvision import transforms

    steps = [transforms.Resize(tuple(input_shape[1:]))]
    if input_shape[0] == 1:
        steps.append(transforms.Grayscale(1))
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * input_shape[0], [0.5] * input_shape[0])]
    return transforms.Compose(steps)


def _torchvision_dataset(name: str, root: str | None, input_shape: tuple[int, ...]) -> DataSplits:
    import torchvision

    dataset_class = getattr(torchvision.datasets, name, None)
    if dataset_class is None:
        raise WorkloadError("workload.data", f"torchvision has no dataset {name!r}")
    if not root:
        raise WorkloadError("workload.data_root", f"torchvision:{name} needs data_root, the folder that holds it")
    if not os.path.isdir(root):
        raise WorkloadError("workload.data_root", f"{root!r} is not a folder (slimtune never downloads data)")
    transform = _image_transform(input_shape)
    try:
        train = dataset_class(root, train=True, download=False, transform=transform)
        val = dataset_class(root, train=False, download=False, transform=transform)
    except (RuntimeError, FileNotFoundError) as error:
        raise WorkloadError(
            "workload.data_root", f"no {name} under {root!r} ({error}); slimtune never downloads data"
        ) from None
    num_classes = len(getattr(train, "classes", [])) or int(max(train.targets)) + 1
    return DataSplits(train, val, num_classes, f"torchvision:{name}:{os.path.abspath(root)}:{len(train)}:{len(val)}")


def _image_folder(path: str, input_shape: tuple[int, ...]) -> DataSplits:
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise WorkloadError("workload.data", f"imagefolder path {path!r} is not a folder")
    transform = _image_transform(input_shape)
    if os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "val")):
        train = ImageFolder(os.path.join(path, "train"), transform=transform)
        val = ImageFolder(os.path.join(path, "val"), transform=transform)
        num_classes = len(train.classes)
    else:
        full = ImageFolder(path, transform=transform)
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0)).tolist()
        cut = int(0.8 * len(full))
        train, val = Subset(full, order[:cut]), Subset(full, order[cut:])
        num_classes = len(full.classes)
    listing = sorted(
        (os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)))
        for d, _, files in os.walk(path) for f in files
    )
    return DataSplits(train, val, num_classes, "imagefolder:" + hashlib.sha256(repr(listing).encode()).hexdigest()[:16])


#: ELPV's four labelled defect probabilities; `elpv` (binary) calls >= 0.5 defective
ELPV_LEVELS = (0.0, 1 / 3, 2 / 3, 1.0)
#: the held-out share of ELPV's 2,624 cells (656 images), never trained on
ELPV_HELD_OUT = 0.25


def _elpv_arrays(data_root: str | None):
    """ELPV's images (uint8, N x H x W) and defect probabilities: from the `elpv-dataset` package,
    or from `data_root`, an .npz with the same arrays (`images`, `probs`) for a machine without
    the package (benchmarks/elpv_array.py writes one, resized)."""
    import numpy as np

    if data_root is not None:
        try:
            with np.load(data_root) as arrays:
                return arrays["images"], arrays["probs"]
        except (OSError, KeyError, ValueError) as error:
            raise WorkloadError("workload.data_root", f"{data_root!r} is not an ELPV array file with 'images' and "
                                f"'probs' ({type(error).__name__}: {error}); benchmarks/elpv_array.py writes one") from None
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise WorkloadError("workload.data", "'elpv' needs the elpv-dataset package: pip install 'slimtune[elpv]' "
                            "(its images are licensed CC-BY-NC-SA-4.0)") from None
    images, probs, _ = load_dataset()
    return images, probs


def _elpv(name: str, input_shape: tuple[int, ...], data_root: str | None) -> DataSplits:
    """ELPV solar cells (300x300 grey electroluminescence images): `elpv` is functional vs
    defective (defect probability >= 0.5, about 2.2:1), `elpv:4class` the four probability
    levels; `:seed=N` picks another split; `:flips` flips training images at random (a cell
    flipped is a cell with the same defects; the baseline and every fine-tune see the flips). The
    split is stratified on the four levels, seeded (seed 0 unless named, so studies are
    comparable) and holds out 25% (656 images). Images are resized (bilinear, antialiased) to the
    input shape once, normalised to [-1, 1], and served with the grey channel repeated when the
    shape asks for 3."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    four, seed, flips = False, 0, False
    for part in filter(None, name.split(":")):
        if part in ("binary", "4class"):
            four = part == "4class"
        elif part.startswith("seed=") and part[5:].isdigit():
            seed = int(part[5:])
        elif part == "flips":
            flips = True
        else:
            raise WorkloadError("workload.data", f"elpv:{name}: unknown option {part!r}; allowed: 'elpv', "
                                "'elpv:4class', with ':seed=N' for another split and ':flips' for random flips")
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise WorkloadError("workload.input_shape", f"elpv needs [1 or 3, H, W] (e.g. [1, 64, 64], [3, 224, 224]), "
                            f"not {list(input_shape)}")
    images, probs = _elpv_arrays(data_root)
    levels = np.abs(np.asarray(probs, dtype=float)[:, None] - np.array(ELPV_LEVELS)).argmin(axis=1)
    labels = torch.tensor(levels if four else (levels >= 2).astype(np.int64), dtype=torch.long)
    pixels = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    size = tuple(input_shape[1:])
    resized = torch.cat([
        torch.nn.functional.interpolate(chunk.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        if tuple(chunk.shape[-2:]) != size else chunk.float()
        for chunk in pixels.split(256)
    ]) / 255.0
    resized = (resized.clamp(0.0, 1.0) - 0.5) / 0.5
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=ELPV_HELD_OUT, random_state=seed,
                                          stratify=levels)
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
    fingerprint = (f"elpv:{'4class' if four else 'binary'}:seed={seed}:{'flips:' if flips else ''}"
                   f"{'x'.join(map(str, input_shape))}:" + _tensor_fingerprint(resized, labels)[:16])
    if input_shape[0] == 1 and not flips:
        train = TensorDataset(resized[train_idx], labels[train_idx])
        val = TensorDataset(resized[val_idx], labels[val_idx])
    else:  # grey stored once, repeated to 3 channels (and flipped) batch by batch on the device
        train = ResizedTensorDataset(resized[train_idx], labels[train_idx], input_shape, flips)
        val = ResizedTensorDataset(resized[val_idx], labels[val_idx], input_shape)
    return DataSplits(train, val, 4 if four else 2, fingerprint,
                      indices={"source_train": train_idx.tolist(), "source_test": val_idx.tolist()})


def _text_data(spec: str, input_shape: tuple[int, ...], model: str | None) -> DataSplits:
    from .text import TextWorkloadError, token_splits

    if model is None or not model.startswith("hf:"):
        raise WorkloadError("workload.data", f"{spec!r} is text: it needs a Hugging Face model (workload.model = "
                            "'hf:minilm' or 'hf:PATH'), whose tokenizer reads it")
    if len(input_shape) != 1:
        raise WorkloadError("workload.input_shape", f"text data takes [seq_len] (e.g. [64]), not {list(input_shape)}")
    try:
        train, held_out, classes, fingerprint = token_splits(spec, model.partition(":")[2], input_shape[0])
    except TextWorkloadError as error:
        raise _text_error(error) from None
    return DataSplits(train, held_out, classes, fingerprint)


def load_data(spec: str, input_shape: tuple[int, ...], data_root: str | None = None,
              model: str | None = None) -> DataSplits:
    """`model` is the study's model spec: text data is tokenized by that model's tokenizer."""
    from .text import is_text_data

    namespace, _, name = spec.partition(":")
    if is_text_data(spec):
        return _text_data(spec, input_shape, model)
    if len(input_shape) != 3:
        raise WorkloadError("workload.input_shape", f"{spec!r} is image data: input_shape is [C, H, W], "
                            f"not {list(input_shape)}")
    if namespace == "sklearn":
        if name != "digits":
            raise WorkloadError("workload.data", f"unknown sklearn dataset {name!r}; allowed: ['digits']")
        return _sklearn_digits(input_shape)
    if namespace == "torchvision":
        return _torchvision_dataset(name, data_root, input_shape)
    if namespace == "imagefolder":
        return _image_folder(name, input_shape)
    if namespace == "elpv":
        return _elpv(name, input_shape, data_root)
    function = _import_function(spec, "workload.data")
    try:
        result = function()
    except Exception as error:
        raise _factory_failed("workload.data", "data", spec, error) from None
    if isinstance(result, DataSplits):
        return result
    return _checked_splits(spec, result)


def _is_dataset(value: object) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and not isinstance(value, (str, bytes))


def _checked_splits(spec: str, result: object) -> DataSplits:
    """A data factory's answer, refused in one line unless it is (train, val, num_classes)."""
    expected = "it must return (train_dataset, val_dataset, num_classes)"
    if not isinstance(result, tuple) or len(result) != 3:
        shape = f"a {type(result).__name__}" + (f" of {len(result)} items" if hasattr(result, "__len__") else "")
        raise WorkloadError("workload.data", f"the data factory {spec!r} returned {shape}; {expected}")
    train, val, num_classes = result
    for name, value in (("train_dataset", train), ("val_dataset", val)):
        if not _is_dataset(value):
            raise WorkloadError("workload.data", f"the data factory {spec!r} returned a {type(value).__name__} as "
                                                 f"{name} (no len() and indexing); {expected}")
    try:
        classes = operator.index(num_classes)  # int, numpy or one-element integer tensor
    except TypeError:
        classes = 0
    if isinstance(num_classes, bool) or classes < 2:
        raise WorkloadError("workload.data", f"the data factory {spec!r} returned num_classes = {num_classes!r}; "
                                             "it must be an int >= 2")
    return DataSplits(train, val, classes, f"{spec}:{len(train)}:{len(val)}")


def check_model(spec: str, make_model: Callable[[], nn.Module], input_shape: tuple[int, ...],
                vocab_size: int | None = None) -> None:
    """Build the model once and run a batch of two through it, so a factory that raises, returns
    something else than a module, or a model that cannot take `input_shape` is a one-line error
    before anything is stored, not a traceback from the baseline's training. The global RNG is
    left as it was (the baseline's training seeds itself, but a user's code may not)."""
    from slimtune.spaces.errors import one_line

    with torch.random.fork_rng(devices=[]):
        try:
            model = make_model()
        except Exception as error:
            raise _factory_failed("workload.model", "model", spec, error) from None
        if not isinstance(model, nn.Module):
            raise WorkloadError("workload.model", f"the model factory {spec!r} returned a {type(model).__name__}, "
                                                  "not a torch.nn.Module")
        try:
            with torch.no_grad():
                model.eval()(example_batch(2, input_shape, vocab_size, torch.Generator().manual_seed(2)))
        except Exception as error:
            raise WorkloadError("workload.model", f"{spec!r} cannot run a batch of input_shape {list(input_shape)}: "
                                                  f"{one_line(error)}", "".join(traceback.format_exception(error))) from None


def load_workload(
    model: str, data: str, input_shape: tuple[int, ...], data_root: str | None = None,
    validation_share: float | None = None,
) -> Workload:
    """Load the data, resolve the model and run it once; raises `WorkloadError` naming the bad
    field (and, for a user's factory that raised, the factory and its exception).
    `validation_share`: carve that share of the training data as the validation split trials are
    judged on (objectives/splits.py), the loader's held-out split becoming the test split; None
    keeps the loader's two splits (trials judged on its held-out split, as before)."""
    input_shape = tuple(input_shape)
    splits = load_data(data, input_shape, data_root, model)
    if validation_share is not None:
        from .splits import with_validation

        splits = with_validation(splits, validation_share)
    make_model = model_factory(model, splits.num_classes, input_shape)
    vocab_size = None
    if model.startswith("hf:"):
        from .text import checkpoint_folder, read_config

        vocab_size = int(read_config(checkpoint_folder(model[3:])).get("vocab_size", 0)) or None
        if vocab_size is None:
            raise WorkloadError("workload.model", f"{model}: config.json has no vocab_size")
    elif len(input_shape) != 3:
        raise WorkloadError("workload.input_shape", f"{model} is an image model: input_shape is [C, H, W], "
                            f"not {list(input_shape)}")
    check_model(model, make_model, input_shape, vocab_size)
    return Workload(model, data, input_shape, splits, make_model, vocab_size)


def check_quantization(workload: Workload, choices: tuple[str, ...] | list[str]) -> None:
    """Refuse (one line, naming what the model has) quantization choices that would touch no
    layer of the workload's model: int8_dynamic on a model without nn.Linear would quantize
    nothing and still name the recipe."""
    from slimtune.spaces.quantization import untouched_choices

    with torch.random.fork_rng(devices=[]):
        problem = untouched_choices(workload.make_model(), choices)
    if problem is not None:
        raise WorkloadError("space.quantization", problem)
