"""slimtune's on-disk cache (`SLIMTUNE_CACHE`, default ~/.cache/slimtune): trained baselines,
the inductor's compiled graphs, prepared data splits. Every worker process of every study on
the machine reads it, and several may write the same entry at once, so entries are written
whole under a private name and renamed into place: a reader sees the old entry, the new one,
or none, never half of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def cache_root() -> Path:
    return Path(os.environ.get("SLIMTUNE_CACHE", Path.home() / ".cache" / "slimtune"))


def save_atomically(value: Any, path: Path) -> None:
    """`torch.save` into `path` so that a killed writer or a concurrent one leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")  # workers starting together each write their own
    torch.save(value, partial)
    partial.replace(path)
