"""Deployable artifacts of a candidate: writing each format, and loading one back only after
every file's sha256 matches its manifest.

Formats (what `write_artifact` writes into a folder):
- `pt2`: `torch.export` program (`model.pt2`); loads with torch alone (+ torchao for a
  quantized recipe: its tensor subclasses are imported by the loader).
- `torchscript`: `torch.jit.trace` (`model.ts`).
- `onnx`: the dynamo ONNX exporter (`model.onnx`), run with onnxruntime.
- `state_dict`: the weights (`weights.pt`) plus `architecture.json` (what pruning changed:
  tensor shapes and module attributes), rebuilt on the model factory the manifest names.
- `aoti`: an AOTInductor package (`model.pt2`, compiled ahead of time) for a CUDA target
  with a compiled runtime.

The manifest itself is composed by the caller (it knows the study); this module only needs
its `format`, `files` (name -> sha256), `input` and `workload` entries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from slimtune.spaces.knob import deployed_inputs

FORMATS = ("pt2", "torchscript", "onnx", "state_dict", "aoti")
MANIFEST = "manifest.json"
#: the file each format's model lives in
MODEL_FILE = {"pt2": "model.pt2", "torchscript": "model.ts", "onnx": "model.onnx",
              "state_dict": "weights.pt", "aoti": "model.pt2"}
COMPILED_RUNTIMES = ("compile", "compile+cudagraphs")
#: rows of the example batch a graph is traced on (2: torch.export specialises a batch of 1)
EXAMPLE_ROWS = 2


class FormatError(ValueError):
    """A format that cannot hold a recipe; the message names the formats that can."""


class ArtifactError(RuntimeError):
    """An exported folder that must not be loaded (missing file, hash mismatch, bad manifest)."""


def why_not(fmt: str, recipe: Any, device: str) -> str | None:
    """Why `fmt` cannot hold `recipe` on `device`, known before building (None: it can).
    The rules are what was measured on torch 2.14 / torchao 0.18 (see tests/objectives)."""
    if fmt not in FORMATS:
        return f"unknown format {fmt!r}"
    cuda = str(device).startswith("cuda")
    if fmt == "aoti":
        if not cuda:
            return "an AOTInductor package is built for a CUDA target (this study's target is the CPU)"
        if recipe.runtime not in COMPILED_RUNTIMES:
            return f"an AOTInductor package is the compiled runtime; the recipe's runtime is {recipe.runtime!r}"
    if fmt == "torchscript" and recipe.quantization in ("int8_dynamic", "fp8_dynamic"):
        return f"torch.jit.trace cannot trace torchao's {recipe.quantization} tensors"
    if fmt == "onnx":
        if recipe.precision == "bf16":
            return "onnxruntime takes numpy inputs, and numpy has no bfloat16"
        if recipe.quantization == "fp8_dynamic":
            return "the ONNX exporter has no float8 path for torchao's fp8 tensors"
    return None


def formats_for(recipe: Any, device: str) -> list[str]:
    return [fmt for fmt in FORMATS if why_not(fmt, recipe, device) is None]


def check_format(fmt: str, recipe: Any, device: str) -> None:
    reason = why_not(fmt, recipe, device)
    if reason is not None:
        raise FormatError(f"format = {fmt!r} cannot hold this recipe: {reason}; "
                          f"formats that can: {', '.join(formats_for(recipe, device))}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` except the manifest, by relative path."""
    return {
        str(path.relative_to(folder)): sha256_file(path)
        for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST
    }


# -- writing ---------------------------------------------------------------------------------
def _architecture(model: nn.Module, fresh: nn.Module) -> dict[str, Any]:
    """What pruning changed, as plain data: every tensor's shape, and each module attribute of a
    plain type (int, float, bool, str, tuples of ints) whose value differs from a fresh model."""
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    fresh_modules = dict(fresh.named_modules())
    attributes: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        original = fresh_modules.get(name)
        if original is None:
            continue
        for key, value in vars(module).items():
            plain = isinstance(value, (int, float, bool, str)) or (
                isinstance(value, tuple) and all(isinstance(v, int) for v in value))
            if plain and getattr(original, key, None) != value:
                attributes.setdefault(name, {})[key] = list(value) if isinstance(value, tuple) else value
    return {"shapes": shapes, "attributes": attributes}


def _dynamic_dims(example: torch.Tensor) -> dict[int, Any]:
    """The batch is dynamic; so is the sequence length of token ids ([batch, seq_len] integers),
    up to the length the study measured (a shorter text is a shorter, cheaper sequence)."""
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=1 << 16)}
    if not example.is_floating_point() and example.dim() == 2:
        dims[1] = torch.export.Dim("seq_len", min=2, max=int(example.shape[1]))
    return dims


def write_artifact(
    model: nn.Module, fmt: str, folder: Path, example: torch.Tensor, *,
    fresh_model: Callable[[], nn.Module] | None = None, on_stage: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """Write `model` (in eval mode, as the trial measured it before its runtime wrapper) in
    `fmt` into `folder`. `example` is a batch as the model takes it (dtype, memory format).
    Returns facts for the manifest (`batch`: "dynamic" or the fixed batch size).

    The files hold the weights and the graph, never the example: a `.pt2` keeps the example
    inputs it was exported with (256 x 3 x 224 x 224 in fp16 is 77 MB, and a slice of a batch
    keeps its whole storage), so the graph is traced on a copy of two rows with a dynamic batch
    dimension, and a program that had to be exported at the trial's batch forgets its example.
    `on_stage` hears "trace", "compile" (AOTInductor) and "write" as each starts."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILE[fmt]
    info: dict[str, Any] = {"batch": "dynamic"}
    small = example[:EXAMPLE_ROWS].clone()  # clone: a view would carry the whole batch's storage
    dims = _dynamic_dims(small)
    with torch.no_grad():
        if fmt in ("pt2", "aoti"):
            on_stage("trace")
            try:
                program = torch.export.export(model, (small,), dynamic_shapes=(dims,))
            except Exception:  # some graphs specialise the batch: export at the trial's size
                program = torch.export.export(model, (example,))
                info["batch"] = int(example.shape[0])
            if fmt == "pt2":
                program.example_inputs = None  # not part of the deployable model (AOTInductor needs them)
                on_stage("write")
                torch.export.save(program, path)
            else:
                from torch._inductor import aoti_compile_and_package

                on_stage("compile")
                aoti_compile_and_package(program, package_path=str(path))
        elif fmt == "torchscript":
            on_stage("trace")
            traced = torch.jit.trace(model, small, check_trace=False)
            torch.jit.save(traced, str(path))
        elif fmt == "onnx":
            on_stage("trace")
            torch.onnx.export(model, (small,), str(path), dynamo=True, dynamic_shapes=(dims,),
                              input_names=["input"], output_names=["logits"], verbose=False)
        elif fmt == "state_dict":
            if fresh_model is None:
                raise ValueError("state_dict needs the model factory to describe what pruning changed")
            on_stage("write")
            torch.save(model.state_dict(), path)
            (folder / "architecture.json").write_text(json.dumps(_architecture(model, fresh_model()), indent=1))
        else:
            raise FormatError(f"format = {fmt!r}: unknown; allowed: {', '.join(FORMATS)}")
    return info


def file_sizes(folder: Path) -> dict[str, int]:
    """Bytes of every file under `folder` except the manifest, by relative path."""
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST
    }


# -- loading ---------------------------------------------------------------------------------
def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ArtifactError(f"manifest input.dtype = {name!r} is not a torch dtype")
    return dtype


def _memory_format(name: str) -> torch.memory_format:
    return {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[name]


@dataclass
class Exported:
    """A loaded artifact: `model(inputs(batch))` runs it on a float32 batch."""

    model: Callable[[torch.Tensor], torch.Tensor]
    manifest: dict[str, Any]
    path: Path
    device: torch.device = torch.device("cpu")
    input_dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format
    extra: dict[str, Any] = field(default_factory=dict)

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        return deployed_inputs(batch, self.device, self.input_dtype, self.memory_format)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST} (not an exported model)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path}: not valid JSON: {error}") from None


def check_hashes(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists must exist with its sha256, and no other file may be there."""
    listed = manifest.get("files") or {}
    if not listed:
        raise ArtifactError(f"{folder}: the manifest lists no files")
    present = file_hashes(folder)
    for name, expected in listed.items():
        if name not in present:
            raise ArtifactError(f"{folder / name}: listed in the manifest but missing")
        if present[name] != expected:
            raise ArtifactError(f"{folder / name}: sha256 {present[name][:16]}... does not match the manifest's "
                                f"{expected[:16]}...; refusing to load a changed file")
    unlisted = sorted(set(present) - set(listed))
    if unlisted:
        raise ArtifactError(f"{folder}: {unlisted[0]!r} is not listed in the manifest; refusing to load")


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: batch.detach().cpu().numpy()})[0])

    return run


def _state_dict_model(folder: Path, manifest: dict[str, Any]) -> nn.Module:
    """The factory's model, reshaped to what pruning left, with the saved weights assigned
    (torchao's quantized tensors included: `assign=True` keeps their subclass)."""
    from .workloads import model_factory

    workload = manifest["workload"]
    model = model_factory(workload["model"], workload["num_classes"], tuple(workload["input_shape"]))()
    architecture = json.loads((folder / "architecture.json").read_text())
    modules = dict(model.named_modules())
    for name, values in architecture["attributes"].items():
        for key, value in values.items():
            setattr(modules[name], key, tuple(value) if isinstance(value, list) else value)
    for name, shape in architecture["shapes"].items():
        owner, _, leaf = name.rpartition(".")
        module = modules[owner]
        if leaf in module._parameters and module._parameters[leaf] is not None:
            module._parameters[leaf] = nn.Parameter(torch.empty(shape), requires_grad=False)
        elif leaf in module._buffers and module._buffers[leaf] is not None:
            module._buffers[leaf] = torch.empty(shape, dtype=module._buffers[leaf].dtype)
    with torch.serialization.safe_globals(_quantized_tensor_types()):
        state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state, assign=True)
    return model.eval()


def _quantized_tensor_types() -> list[type]:
    """torchao's quantized tensor classes, allowed in a `weights_only` load: torchao registers
    some of them as safe itself, not all (a bf16 int8 weight-only convolution is stored as an
    `IntxUnpackedToInt8Tensor`, which torch 2.14 + torchao 0.18 refused)."""
    try:
        import torchao.quantization as quantization
    except ImportError:
        return []
    return [value for value in vars(quantization).values() if isinstance(value, type) and issubclass(value, torch.Tensor)]


def load_exported(folder: str | Path, device: str | torch.device | None = None) -> Exported:
    """Load an exported model after checking the sha256 of every file against the manifest;
    raises `ArtifactError` (and loads nothing) on any mismatch. `device` defaults to the
    target the model was exported for."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_hashes(folder, manifest)
    fmt = manifest.get("format")
    if fmt not in FORMATS:
        raise ArtifactError(f"{folder}: manifest format = {fmt!r}; allowed: {', '.join(FORMATS)}")
    device = torch.device(device or manifest.get("measure", {}).get("device", "cpu"))
    path = folder / MODEL_FILE[fmt]
    if fmt == "pt2":
        model: Callable = torch.export.load(path).module().to(device)
    elif fmt == "aoti":
        from torch._inductor import aoti_load_package

        model = aoti_load_package(str(path))
    elif fmt == "torchscript":
        model = torch.jit.load(str(path), map_location=device).eval()
    elif fmt == "onnx":
        model = _onnx_runner(path)
        device = torch.device("cpu")
    else:
        model = _state_dict_model(folder, manifest).to(device)
    spec = manifest.get("input", {})
    return Exported(model, manifest, folder, device, _dtype(spec.get("dtype", "float32")),
                    _memory_format(spec.get("memory_format", "contiguous")))
