"""Quantization with torchao: which layers get which torchao config, per choice and device.

torchao's `quantize_` only touches `nn.Linear` unless told otherwise, and most of its int8
paths have no convolution kernel. A recipe called "int8" that quantized only a CNN's
classifier would misreport what it did, so `quantize` returns the names of the layers it
really quantized (and those torchao refused), and the evaluator records them next to the measured weight bytes.

Layer paths (checked on torch 2.14 / torchao 0.18, CPU):
- int8_weight_only: Linear -> Int8WeightOnlyConfig; Conv2d -> IntxWeightOnlyConfig(int8).
- int8_dynamic: Linear -> Int8DynamicActivationInt8WeightConfig; torchao has no conv path.
- int4_weight_only: Int4WeightOnlyConfig on CUDA Linear (needs the `mslk` package);
  IntxWeightOnlyConfig(int4) otherwise, which stores int4 values unpacked in int8 bytes.
- fp8_dynamic: Float8DynamicActivationFloat8WeightConfig on CUDA Linear (needs sm89+).
Which of these a target really runs is decided by the capability probe, not by this table.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .errors import one_line
from .knob import Candidate, Knob, StudyField, choose

QUANTIZATION_CHOICES = ("none", "int8_weight_only", "int8_dynamic", "int4_weight_only", "fp8_dynamic")

LayerFilter = Callable[[nn.Module, str], bool]


#: why the output projection of nn.MultiheadAttention stays in float (torchao's own filter
#: leaves it out too): the attention reads its weight directly, not through the module's forward
ATTENTION_PROJECTION = "nn.MultiheadAttention reads this weight directly; it stays in float"


def _is_attention_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear)


def _is_linear(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear) and not _is_attention_projection(module)


def _is_conv(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Conv2d)


def _import_torchao_quietly() -> None:
    """Import torchao once with torch's pytree logger muted: on torch 2.14 torchao's import
    logs a deprecation line about registering an Enum, on every run, that users cannot act on."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torchao.quantization  # noqa: F401
    finally:
        logger.setLevel(level)


#: which layers each choice quantizes (the same filters on every device; what a device can
#: really run is the probe's job). A choice whose filters select no layer of a model is refused
#: at start-up: it would name a recipe for something it did not do.
LAYER_FILTERS: dict[str, tuple[LayerFilter, ...]] = {
    "int8_weight_only": (_is_linear, _is_conv),
    "int8_dynamic": (_is_linear,),
    "int4_weight_only": (_is_linear, _is_conv),
    "fp8_dynamic": (_is_linear,),
}
#: what each choice's filters take, in the user's words
LAYER_KINDS = {"int8_weight_only": "nn.Linear and nn.Conv2d", "int8_dynamic": "nn.Linear",
               "int4_weight_only": "nn.Linear and nn.Conv2d", "fp8_dynamic": "nn.Linear"}
#: the layers whose weights a share of quantized weights is counted against
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _current(config_class: type, **kwargs: object) -> object:
    """The config in its current (non-deprecated) version: torchao 0.17 still defaults
    Int8WeightOnlyConfig and Int8DynamicActivationInt8WeightConfig to version 1 (built on
    AffineQuantizedTensor and PlainLayout, which warn on every layer); 0.18 defaults to 2.

    `set_inductor_config=False`: by default torchao's transforms switch on inductor's
    coordinate-descent tuning for the whole process and never switch it off, so every later
    compile in the trial worker, quantized or not, took 25-60 s instead of 4-6 s on an H200
    and was a differently tuned model than a fresh process deploys."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if "version" in fields and fields["version"].default < 2:
        kwargs["version"] = 2
    if "set_inductor_config" in fields:
        kwargs["set_inductor_config"] = False
    return config_class(**kwargs)


def _plan(choice: str, device: torch.device) -> list[tuple[object, LayerFilter]]:
    """(torchao config, layer filter) pairs that implement `choice` on `device`."""
    _import_torchao_quietly()
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerAxis

    if choice not in LAYER_FILTERS:
        raise ValueError(f"quantization={choice!r}; allowed: {list(QUANTIZATION_CHOICES)}")
    linear, *conv = LAYER_FILTERS[choice]
    int8_conv = _current(IntxWeightOnlyConfig, weight_dtype=torch.int8, granularity=PerAxis(0))
    int4_any = _current(IntxWeightOnlyConfig, weight_dtype=torch.int4, granularity=PerAxis(0))
    cuda = device.type == "cuda"
    if choice == "int8_weight_only":
        return [(_current(Int8WeightOnlyConfig), linear), (int8_conv, *conv)]
    if choice == "int8_dynamic":
        return [(_current(Int8DynamicActivationInt8WeightConfig), linear)]
    if choice == "int4_weight_only":
        return [(_current(Int4WeightOnlyConfig, group_size=32) if cuda else int4_any, linear), (int4_any, *conv)]
    if not cuda:
        raise NotImplementedError("fp8_dynamic needs a CUDA device with float8 support (sm89+)")
    return [(_current(Float8DynamicActivationFloat8WeightConfig), linear)]


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's layers with a weight matrix or kernel (Linear, Conv), by name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, WEIGHT_LAYERS)}


def layers_for(model: nn.Module, choice: str) -> list[str]:
    """The names of the layers `choice` would try to quantize in `model`."""
    filters = LAYER_FILTERS.get(choice, ())
    return [name for name, module in model.named_modules() if any(f(module, name) for f in filters)]


def untouched_choices(model: nn.Module, choices: tuple[str, ...] | list[str]) -> str | None:
    """One line naming the quantization choices that would touch no layer of `model` and what
    the model has, or None when every choice touches some layer."""
    empty = [choice for choice in choices if choice != "none" and not layers_for(model, choice)]
    if not empty:
        return None
    kinds: dict[str, int] = {}
    for module in weight_layers(model).values():
        kinds[type(module).__name__] = kinds.get(type(module).__name__, 0) + 1
    has = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "no Linear or Conv layer"
    takes = "; ".join(f"{choice!r} quantizes {LAYER_KINDS[choice]} only" for choice in empty)
    return (f"{', '.join(map(repr, empty))} would quantize no layer of this model ({takes}); "
            f"the model has {has}; remove {'it' if len(empty) == 1 else 'them'} from the list")


def _percent(share: float) -> str:
    """Two significant figures or so, never rounded up to 100% (nor down to 0%)."""
    percent = 100 * share
    if share >= 1 or share <= 0:
        return f"{percent:.0f}%"
    if percent >= 99:
        return f"{math.floor(percent * 10) / 10:.1f}%"
    return f"{percent:.0f}%" if percent >= 10 else f"{percent:.1f}%" if percent >= 1 else f"{max(percent, 0.01):.2f}%"


def coverage(quantized_layers: list[str], weight_share: float | None = None, layer_count: int | None = None) -> str:
    """What a quantization recipe really covered, e.g. "fc only, 0.05% of weights" or
    "20 of 21 layers, 99.9% of weights" (from a trial's stored measurement)."""
    count = len(quantized_layers)
    if count == 0:
        which = "no layer"
    elif count == 1 and layer_count != 1:
        which = f"{quantized_layers[0] or 'the model'} only"
    elif layer_count is not None and count >= layer_count:
        which = f"all {count} layers"
    else:
        which = f"{count} of {layer_count} layers" if layer_count else f"{count} layers"
    return which + (f", {_percent(weight_share)} of weights" if weight_share is not None else "")


@dataclass
class QuantizationReport:
    """Which layers were quantized, and which torchao refused (name -> reason)."""

    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    #: of the weight layers' (Linear, Conv) weight elements, the share in quantized layers
    weight_share: float = 0.0
    #: how many weight layers the model has
    layer_count: int = 0


#: CUDA choices that quantize activations too, and so run int8 / fp8 matrix products
MATMUL_CHOICES = ("int8_dynamic", "fp8_dynamic")


def _misaligned(module: nn.Module, choice: str, device: torch.device) -> str | None:
    """Why a Linear layer stays in float under an int8 / fp8 matrix-product choice on CUDA: those
    kernels (torch._int_mm, torch._scaled_mm) take only dimensions that are multiples of 16, and
    torchao quantizes such a layer anyway, to fail at the first forward (measured on an H100: a
    2-class head, 384 -> 2, failed every int8_dynamic recipe of a MiniLM)."""
    if device.type != "cuda" or choice not in MATMUL_CHOICES or not isinstance(module, nn.Linear):
        return None
    if module.in_features % 16 or module.out_features % 16:
        return (f"{module.in_features} -> {module.out_features}: {choice}'s CUDA matrix kernels need both "
                "dimensions a multiple of 16; it stays in float")
    return None


def quantize(model: nn.Module, choice: str, device: torch.device) -> QuantizationReport:
    """Quantize `model` in place, one layer at a time.

    Layer by layer, because torchao refuses some shapes (0.18 fails on conv weights with a
    single input channel per group, such as a grayscale stem or a depthwise conv): such a
    layer stays in float and is listed as skipped instead of failing the whole recipe.
    """
    layers = weight_layers(model)
    sizes = {name: module.weight.numel() for name, module in layers.items()}  # counted before quantizing
    report = QuantizationReport(layer_count=len(layers))
    if choice == "none":
        return report
    _import_torchao_quietly()
    from torchao.quantization import quantize_

    for name, module in model.named_modules():
        if _is_attention_projection(module):
            report.skipped[name] = ATTENTION_PROJECTION
    for config, selects in _plan(choice, device):
        for name, module in list(model.named_modules()):
            if not selects(module, name):
                continue
            if (reason := _misaligned(module, choice, device)) is not None:
                report.skipped[name] = reason
                continue
            try:
                quantize_(module, config, filter_fn=selects)
            except Exception as error:  # torchao raises assorted types for unsupported shapes
                report.skipped[name] = one_line(error, limit=160)
            else:
                report.quantized.append(name)
    if not report.quantized:
        raise NotImplementedError(f"quantization={choice!r} could quantize no layer: {report.skipped}")
    total = sum(sizes.values())
    report.weight_share = sum(sizes.get(name, 0) for name in report.quantized) / total if total else 0.0
    return report


class QuantizationKnob(Knob):
    name = "quantization"
    fields = (StudyField("quantization", "choices", ("none",), allowed=QUANTIZATION_CHOICES,
                         help="torchao quantization, applied after fine-tuning; each recipe says which layers it covered"),)
    recipe_fields = {"quantization": "none"}

    def suggest(self, trial, space, recipe: dict) -> None:
        recipe["quantization"] = choose(trial, "quantization", space.quantization)

    def apply(self, candidate: Candidate, recipe, context) -> None:
        for parameter in candidate.model.parameters():
            parameter.requires_grad_(False)
        report = quantize(candidate.model, recipe.quantization, candidate.device)
        candidate.record["quantized_layers"] = report.quantized
        candidate.record["unquantized_layers"] = report.skipped
        candidate.record["quantized_weight_share"] = report.weight_share
        candidate.record["weight_layers"] = report.layer_count

    def describe(self, recipe) -> list[str]:
        return [] if recipe.quantization == "none" else [recipe.quantization]

    def probed_field(self):
        return self.fields[0]

    def try_on_tiny_model(self, value, device: torch.device) -> None:
        from .tiny import run_tiny, tiny_model

        model = tiny_model(device)
        quantize(model, value, device)
        run_tiny(model, device)
