"""Structured pruning really shrinks models and keeps their interface."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VisionTransformer

from slimtune.objectives.models import small_cnn
from slimtune.spaces.pruning import IMPORTANCES, count_params_and_macs, prune


def _small_cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return small_cnn(num_classes=10, input_shape=(1, 8, 8)).eval(), torch.randn(2, 1, 8, 8)


def _resnet18() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval(), torch.randn(2, 3, 32, 32)


def _tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=16, patch_size=4, num_layers=1, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()


@pytest.mark.parametrize("build", [_small_cnn, _resnet18], ids=["small_cnn", "resnet18"])
def test_prune_lowers_params_and_macs_and_keeps_output_shape(build):
    model, inputs = build()
    params_before, macs_before = count_params_and_macs(model, inputs[:1])
    assert model(inputs).shape == (2, 10)

    returned = prune(model, 0.5, inputs[:1], num_classes=10)

    assert returned is model  # in place
    params_after, macs_after = count_params_and_macs(model, inputs[:1])
    assert params_after < params_before
    assert macs_after < macs_before
    # Half of the channels of every layer go: a conv's weights shrink about four-fold.
    assert params_after < 0.5 * params_before
    assert macs_after < 0.5 * macs_before
    with torch.no_grad():
        out = model.eval()(inputs)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("build", [_small_cnn, _resnet18], ids=["small_cnn", "resnet18"])
def test_classifier_keeps_its_outputs(build):
    model, inputs = build()
    prune(model, 0.5, inputs[:1], num_classes=10)
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert heads[-1].out_features == 10
    # Its inputs were pruned with the layers that feed it.
    assert heads[-1].in_features < (128 if build is _small_cnn else 512)


def test_small_cnn_loses_the_requested_share_of_channels():
    model, inputs = _small_cnn()
    before = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    prune(model, 0.25, inputs[:1], num_classes=10)
    after = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert after == [c - c // 4 for c in before]  # [48, 96, 192] from [64, 128, 256]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == after


@pytest.mark.parametrize("importance", sorted(IMPORTANCES))
def test_every_importance_criterion_prunes(importance):
    model, inputs = _small_cnn()
    params_before, _ = count_params_and_macs(model, inputs[:1])
    prune(model, 0.3, inputs[:1], num_classes=10, importance=importance)
    params_after, _ = count_params_and_macs(model, inputs[:1])
    assert params_after < params_before
    assert model(inputs).shape == (2, 10)


def test_ratio_zero_returns_the_model_unchanged():
    model, inputs = _small_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert prune(model, 0.0, inputs[:1], num_classes=10) is model
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert after[key].shape == value.shape
        assert torch.equal(after[key], value)


def test_prune_keeps_the_training_flag():
    model, inputs = _small_cnn()
    model.train()
    prune(model, 0.5, inputs[:1], num_classes=10)
    assert model.training
    model.eval()
    prune(model, 0.2, inputs[:1], num_classes=10)
    assert not model.training


@pytest.mark.parametrize("ratio", [-0.1, 0.95, 1.0])
def test_ratio_out_of_range_raises(ratio):
    model, inputs = _small_cnn()
    with pytest.raises(ValueError, match="prune_ratio"):
        prune(model, ratio, inputs[:1], num_classes=10)


def test_unknown_importance_raises_naming_the_allowed_ones():
    model, inputs = _small_cnn()
    with pytest.raises(ValueError, match="l2"):
        prune(model, 0.5, inputs[:1], num_classes=10, importance="l3")


@pytest.mark.filterwarnings("ignore:Unwrapped parameters detected")
def test_vision_transformer_gets_fewer_params_and_keeps_its_output():
    model = _tiny_vit()
    inputs = torch.randn(3, 3, 16, 16)
    params_before = sum(p.numel() for p in model.parameters())
    prune(model, 0.5, inputs[:1], num_classes=10)
    assert sum(p.numel() for p in model.parameters()) < params_before
    with torch.no_grad():
        out = model.eval()(inputs)
    assert out.shape == (3, 10)
    assert model.heads.head.out_features == 10


@pytest.mark.filterwarnings("ignore:Unwrapped parameters detected")
def test_vision_transformer_heads_are_narrowed_and_the_mlp_pruned():
    """nn.MultiheadAttention keeps its 4 heads, each narrower (torch-pruning removes whole heads
    only from separate q/k/v Linear layers); the embedding stays a multiple of the heads."""
    model = _tiny_vit()
    attention = model.encoder.layers[0].self_attention
    mlp_in = model.encoder.layers[0].mlp[0]
    hidden_before = mlp_in.out_features
    prune(model, 0.5, torch.randn(1, 3, 16, 16), num_classes=10)
    assert mlp_in.out_features < hidden_before
    assert attention.num_heads == 4
    assert attention.embed_dim < 32 and attention.embed_dim % 4 == 0
    assert attention.head_dim == attention.embed_dim // 4
    assert model.hidden_dim == attention.embed_dim
    assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_prune_silences_the_unwrapped_parameters_warning():
    model = _tiny_vit()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prune(model, 0.5, torch.randn(1, 3, 16, 16), num_classes=10)
    assert not [w for w in caught if "unwrapped" in str(w.message).lower()]
