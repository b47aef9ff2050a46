"""The hardware and software a measurement was taken on, stored with every study run."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model as the kernel reports it (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(device: torch.device, threads: int) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "threads": threads,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda if cuda else None,
        "torchao_version": _version("torchao"),
        "torch_pruning_version": _version("torch-pruning"),
        "optuna_version": _version("optuna"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        # which worker and which physical GPU: several workers measure one study
        "host": platform.node(),
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_uuid": str(getattr(torch.cuda.get_device_properties(device), "uuid", "")) or None if cuda else None,
    }
