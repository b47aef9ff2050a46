"""Precision casts and the TF32 math mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtune.spaces.precision import PRECISION_CHOICES, cast, dtype_of, math_mode


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


@pytest.fixture
def restore_tf32_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cast_changes_parameters_and_buffers(precision, dtype):
    model = _model()
    bn = model[1]
    bn.running_mean.fill_(0.25)
    returned = cast(model, precision)
    assert returned is model
    assert all(p.dtype == dtype for p in model.parameters())
    assert bn.running_mean.dtype == dtype and bn.running_var.dtype == dtype
    assert torch.all(bn.running_mean == 0.25)  # values kept
    assert bn.num_batches_tracked.dtype == torch.int64  # integer buffers stay integers


def test_cast_bf16_model_runs_in_bf16():
    model = cast(_model(), "bf16")
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 8, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4)


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_fp32_and_tf32_keep_float32(precision):
    model = cast(_model(), precision)
    assert all(t.dtype == torch.float32 for t in [*model.parameters(), model[1].running_var])
    assert dtype_of(precision) is torch.float32


def test_dtype_of_each_choice():
    assert {p: dtype_of(p) for p in PRECISION_CHOICES} == {
        "fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
    }


@pytest.mark.parametrize("bad", ["fp8", "float32", "", "BF16"])
def test_unknown_precision_raises_naming_the_allowed_values(bad):
    with pytest.raises(ValueError) as info:
        dtype_of(bad)
    for allowed in ("fp32", "tf32", "fp16", "bf16"):
        assert allowed in str(info.value)
    with pytest.raises(ValueError):
        cast(_model(), bad)


@pytest.mark.parametrize("before", [(False, False), (False, True), (True, False)])
def test_tf32_math_mode_switches_on_and_restores(restore_tf32_flags, before):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    with math_mode("tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert torch.backends.cudnn.allow_tf32 is True
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_tf32_math_mode_restores_after_an_error(restore_tf32_flags):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    with pytest.raises(RuntimeError, match="boom"):
        with math_mode("tf32"):
            raise RuntimeError("boom")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_every_other_precision_switches_tf32_off_explicitly(restore_tf32_flags, precision):
    """PyTorch's default leaves cuDNN TF32 on: an fp32 that kept it would time TF32 convolutions."""
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    with math_mode(precision):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
