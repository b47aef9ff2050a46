"""torchao quantization per choice on CPU: which layers really change, and what is reported."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchao.utils import TorchAOBaseTensor

from slimtune.spaces.quantization import quantize

CPU = torch.device("cpu")
LINEARS = {"6", "8"}
CONVS = {"0", "2"}


def _model(in_channels: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10),
    ).eval()


def _inputs(in_channels: int = 4) -> torch.Tensor:
    return torch.randn(8, in_channels, 8, 8, generator=torch.Generator().manual_seed(1))


def _is_plain(weight: torch.Tensor) -> bool:
    return type(weight) is nn.Parameter and type(weight.data) is torch.Tensor


def _weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("int8_weight_only", LINEARS | CONVS),
        ("int8_dynamic", LINEARS),
        ("int4_weight_only", LINEARS | CONVS),
    ],
)
def test_listed_layers_get_torchao_weights_and_the_others_stay_plain(choice, expected):
    model = _model()
    assert all(_is_plain(m.weight) for m in _weighted_layers(model).values())

    report = quantize(model, choice, CPU)

    assert set(report.quantized) == expected
    assert len(report.quantized) == len(expected)  # each layer once
    assert report.skipped == {}
    for name, module in _weighted_layers(model).items():
        if name in report.quantized:
            assert isinstance(module.weight, TorchAOBaseTensor), name
            assert not _is_plain(module.weight)
        else:
            assert _is_plain(module.weight), name


def test_int8_dynamic_leaves_convolutions_alone():
    model = _model()
    conv_weights = {name: model[int(name)].weight.detach().clone() for name in CONVS}
    report = quantize(model, "int8_dynamic", CPU)
    for name, weight in conv_weights.items():
        assert name not in report.quantized
        assert name not in report.skipped
        assert _is_plain(model[int(name)].weight)
        assert torch.equal(model[int(name)].weight, weight)


@pytest.mark.parametrize(
    "choice, tolerance", [("int8_weight_only", 0.05), ("int8_dynamic", 0.05), ("int4_weight_only", 0.25)]
)
def test_output_shape_is_kept_and_close_to_the_float_model(choice, tolerance):
    model, inputs = _model(), _inputs()
    with torch.inference_mode():
        reference = model(inputs)
    quantize(model, choice, CPU)
    with torch.inference_mode():
        out = model(inputs)
    assert out.shape == reference.shape == (8, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    scale = reference.abs().max().item()
    assert (out - reference).abs().max().item() <= tolerance * scale
    assert not torch.equal(out, reference)  # something was really quantized


def test_single_input_channel_conv_is_skipped_with_a_reason():
    model = _model(in_channels=1)
    report = quantize(model, "int8_weight_only", CPU)
    assert "0" in report.skipped
    assert isinstance(report.skipped["0"], str) and report.skipped["0"].strip()
    assert "0" not in report.quantized
    assert _is_plain(model[0].weight)
    assert set(report.quantized) == {"2"} | LINEARS
    with torch.inference_mode():
        assert model(_inputs(in_channels=1)).shape == (8, 10)


def test_a_choice_that_quantizes_nothing_raises():
    convs_only = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    with pytest.raises(NotImplementedError, match="int8_dynamic"):
        quantize(convs_only, "int8_dynamic", CPU)


def test_fp8_dynamic_on_cpu_raises_not_implemented():
    with pytest.raises(NotImplementedError, match="CUDA"):
        quantize(_model(), "fp8_dynamic", CPU)


def test_unknown_choice_raises_value_error_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="int8_weight_only"):
        quantize(_model(), "int3", CPU)


def test_none_leaves_the_model_untouched():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = quantize(model, "none", CPU)
    assert report.quantized == [] and report.skipped == {}
    assert all(_is_plain(m.weight) for m in _weighted_layers(model).values())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


@pytest.mark.parametrize("choice", ["int8_weight_only", "int8_dynamic", "int4_weight_only"])
def test_attention_output_projections_stay_float_and_the_vit_runs(choice):
    """nn.MultiheadAttention reads out_proj.weight itself, so a quantized one broke every
    forward of a ViT ("unimplemented operator aten.t"); the MLP Linears are still quantized."""
    from slimtune.objectives.models import vit_tiny
    from slimtune.spaces.quantization import ATTENTION_PROJECTION

    torch.manual_seed(0)
    model = vit_tiny(10, (1, 8, 8)).eval()
    projections = {name for name, m in model.named_modules() if isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)}
    assert len(projections) == 4  # one per encoder layer
    report = quantize(model, choice, CPU)
    assert {name: report.skipped[name] for name in projections} == dict.fromkeys(projections, ATTENTION_PROJECTION)
    assert not projections & set(report.quantized)
    assert "heads.head" in report.quantized and any(name.endswith("mlp.0") for name in report.quantized)
    with torch.inference_mode():
        assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_the_share_of_weights_quantized_is_reported():
    """int8_dynamic has no conv path: on this model it covers the two Linear layers, 4,736 of
    the 7,616 weight elements (the convs hold 576 + 2,304)."""
    from slimtune.spaces.quantization import coverage

    model = _model()
    sizes = {name: m.weight.numel() for name, m in _weighted_layers(model).items()}
    report = quantize(model, "int8_dynamic", CPU)
    assert report.layer_count == 4
    assert report.weight_share == pytest.approx(sum(sizes[n] for n in LINEARS) / sum(sizes.values()))
    assert report.weight_share == pytest.approx(4736 / 7616)
    assert coverage(report.quantized, report.weight_share, report.layer_count) == "2 of 4 layers, 62% of weights"
    assert coverage(["fc"], 0.000456, 21) == "fc only, 0.05% of weights"
    assert coverage(["a", "b"], 1.0, 2) == "all 2 layers, 100% of weights"
    assert coverage(["a", "b"], 0.9997, 3) == "2 of 3 layers, 99.9% of weights"  # never rounded up to 100%
    assert quantize(_model(), "none", CPU).weight_share == 0.0


def test_a_recipe_describes_its_quantization_with_its_coverage():
    from slimtune.spaces import Recipe

    recipe = Recipe(quantization="fp8_dynamic", precision="bf16")
    measured = {"quantized_layers": ["fc"], "quantized_weight_share": 0.000456, "weight_layers": 21}
    assert recipe.describe(measured) == "bf16, fp8_dynamic (fc only, 0.05% of weights)"
    assert recipe.describe() == "bf16, fp8_dynamic"
    # a measurement stored before the share was recorded
    assert recipe.describe({"quantized_layers": ["fc"]}) == "bf16, fp8_dynamic (fc only)"
    assert Recipe().describe(measured) == "baseline"


def test_choices_that_would_touch_no_layer_are_named_with_what_the_model_has():
    from slimtune.spaces.quantization import untouched_choices

    convs_only = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert untouched_choices(convs_only, ["none", "int8_weight_only"]) is None
    assert untouched_choices(convs_only, ["none", "int8_dynamic", "fp8_dynamic", "int4_weight_only"]) == (
        "'int8_dynamic', 'fp8_dynamic' would quantize no layer of this model ('int8_dynamic' quantizes nn.Linear "
        "only; 'fp8_dynamic' quantizes nn.Linear only); the model has 2 Conv2d; remove them from the list")
    assert untouched_choices(_model(), ["int8_dynamic"]) is None


def test_torchao_configs_are_built_in_their_current_version():
    """torchao 0.17 defaults two int8 configs to version 1 (AffineQuantizedTensor, PlainLayout:
    deprecated, a warning per layer); the plan asks for version 2 wherever a config has versions."""
    from dataclasses import dataclass

    from slimtune.spaces.quantization import _current, _plan

    for choice in ("int8_weight_only", "int8_dynamic", "int4_weight_only"):
        for config, _ in _plan(choice, CPU):
            assert getattr(config, "version", 2) >= 2, (choice, config)

    @dataclass
    class VersionOneByDefault:  # the shape of torchao 0.17's Int8WeightOnlyConfig
        group_size: int | None = None
        version: int = 1

    assert _current(VersionOneByDefault).version == 2


@pytest.mark.parametrize("choice", ["int8_weight_only", "int8_dynamic", "int4_weight_only"])
def test_quantizing_leaves_the_compilers_settings_alone(choice):
    """torchao's transforms switch on coordinate-descent tuning for the whole process by
    default: every later compile in the worker was then 5x slower and tuned differently."""
    import torch._inductor.config as inductor

    names = ("coordinate_descent_tuning", "coordinate_descent_check_all_directions", "force_fuse_int_mm_with_mul")
    before = {name: getattr(inductor, name) for name in names}
    with inductor.patch(coordinate_descent_tuning=False, coordinate_descent_check_all_directions=False,
                        force_fuse_int_mm_with_mul=False):
        quantize(_model(), choice, CPU)
        assert {name: getattr(inductor, name) for name in names} == dict.fromkeys(names, False)
    assert {name: getattr(inductor, name) for name in names} == before


def test_a_warning_is_shown_once_even_when_torch_resets_the_filters():
    import warnings

    from slimtune.spaces import warnings_once

    shown: list[str] = []
    previous = warnings.showwarning
    try:
        warnings_once.show_once(shown.append)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            for _ in range(5):
                with warnings.catch_warnings():  # what wipes Python's own once-per-location memory
                    pass
                warnings.warn("Deprecation: a test-only deprecation\nsecond line", UserWarning)
    finally:
        warnings.showwarning = previous
    assert len(shown) == 1 and "\n" not in shown[0]
    assert shown[0].endswith("(UserWarning, shown once per run): Deprecation: a test-only deprecation")
