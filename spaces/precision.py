"""Numeric precision of weights and activations: fp32, tf32 (CUDA matmul mode), fp16, bf16."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

PRECISION_CHOICES = ("fp32", "tf32", "fp16", "bf16")

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_of(precision: str) -> torch.dtype:
    try:
        return DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision={precision!r}; allowed: {list(PRECISION_CHOICES)}") from None


def cast(model: nn.Module, precision: str) -> nn.Module:
    """Cast floating-point weights and buffers in place (BatchNorm included); returns `model`."""
    return model.to(dtype=dtype_of(precision))


@contextlib.contextmanager
def math_mode(precision: str) -> Iterator[None]:
    """TF32 is a matmul/conv mode of fp32 tensors on CUDA, not a dtype: switch it on only here."""
    if precision != "tf32":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
