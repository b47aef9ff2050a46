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

    int8_conv = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    int4_any = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0))
    cuda = device.type == "cuda"
    if choice == "int8_weight_only":
        return [(Int8WeightOnlyConfig(), _is_linear), (int8_conv, _is_conv)]
    if choice == "int8_dynamic":
        return [(Int8DynamicActivationInt8WeightConfig(), _is_linear)]
    if choice == "int4_weight_only":
        linear = Int4WeightOnlyConfig(group_size=32) if cuda else int4_any
        return [(linear, _is_linear), (int4_any, _is_conv)]
    if choice == "fp8_dynamic":
        if not cuda:
            raise NotImplementedError("fp8_dynamic needs a CUDA device with float8 support (sm89+)")
        return [(Float8DynamicActivationFloat8WeightConfig(), _is_linear)]
    raise ValueError(f"quantization={choice!r}; allowed: {list(QUANTIZATION_CHOICES)}")


@dataclass
class QuantizationReport:
    """Which layers were quantized, and which torchao refused (name -> reason)."""

    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def quantize(model: nn.Module, choice: str, device: torch.device) -> QuantizationReport:
    """Quantize `model` in place, one layer at a time.

    Layer by layer, because torchao refuses some shapes (0.18 fails on conv weights with a
    single input channel per group, such as a grayscale stem or a depthwise conv): such a
    layer stays in float and is listed as skipped instead of failing the whole recipe.
    """
    report = QuantizationReport()
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
            try:
                quantize_(module, config, filter_fn=selects)
            except Exception as error:  # torchao raises assorted types for unsupported shapes
                report.skipped[name] = one_line(error, limit=160)
            else:
                report.quantized.append(name)
    if not report.quantized:
        raise NotImplementedError(f"quantization={choice!r} could quantize no layer: {report.skipped}")
    return report


class QuantizationKnob(Knob):
    name = "quantization"
    fields = (StudyField("quantization", "choices", ("none",), allowed=QUANTIZATION_CHOICES),)
    recipe_fields = {"quantization": "none"}

    def suggest(self, trial, space, recipe: dict) -> None:
        recipe["quantization"] = choose(trial, "quantization", space.quantization)

    def apply(self, candidate: Candidate, recipe, context) -> None:
        for parameter in candidate.model.parameters():
            parameter.requires_grad_(False)
        report = quantize(candidate.model, recipe.quantization, candidate.device)
        candidate.record["quantized_layers"] = report.quantized
        candidate.record["unquantized_layers"] = report.skipped

    def describe(self, recipe) -> list[str]:
        return [] if recipe.quantization == "none" else [recipe.quantization]

    def probed_field(self):
        return self.fields[0]

    def try_on_tiny_model(self, value, device: torch.device) -> None:
        from .tiny import run_tiny, tiny_model

        model = tiny_model(device)
        quantize(model, value, device)
        run_tiny(model, device)
