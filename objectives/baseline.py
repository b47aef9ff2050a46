"""The baseline (teacher): loaded from a checkpoint, or trained once and cached by content hash.

The cache key covers everything that decides the trained weights: model spec, a fingerprint
of the data, input shape, the training recipe and the torch version. A second run of the same
study loads the cached weights instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from slimtune.spaces.errors import first_line

from .batching import training_batches
from .cache import cache_root, save_atomically
from .workloads import Workload, WorkloadError


@dataclass(frozen=True)
class TrainingRecipe:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


@dataclass
class Baseline:
    model: nn.Module
    source: str  # "checkpoint:<path>", "cache:<path>" or "trained:<path>"
    train_seconds: float = 0.0


def cache_dir() -> Path:
    return cache_root() / "baselines"


def cache_key(workload: Workload, recipe: TrainingRecipe) -> str:
    material = {
        "model": workload.model_spec,
        "data": workload.data.fingerprint,
        "input_shape": list(workload.input_shape),
        "num_classes": workload.num_classes,
        "recipe": asdict(recipe),
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


Progress = Callable[[str], None]


def train(workload: Workload, recipe: TrainingRecipe, device: torch.device, progress: Progress | None = None) -> nn.Module:
    """Plain supervised training with AdamW and a one-cycle schedule, seeded. `progress` hears
    one line per epoch (loss, held-out accuracy): on a real model training takes minutes."""
    torch.manual_seed(recipe.seed)
    model = workload.make_model().to(device)
    steps_per_epoch = max(1, len(workload.data.train) // recipe.batch_size)
    steps = recipe.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=max(steps, 1))
    batches = training_batches(workload.data.train, recipe.batch_size, recipe.seed, device)
    model.train()
    started = time.perf_counter()
    for step in range(1, steps + 1):
        inputs, labels = next(batches)
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if progress is not None and step % steps_per_epoch == 0:
            from .accuracy import top1_accuracy

            model.eval()
            held_out = Subset(workload.data.val, range(min(len(workload.data.val), 2048)))
            accuracy = top1_accuracy(model, held_out, recipe.batch_size, device)
            model.train()
            split = "validation" if workload.data.test is not None else "held-out"  # never the test split
            progress(f"baseline: epoch {step // steps_per_epoch}/{recipe.epochs}  loss {loss.item():.4f}  "
                     f"{split} accuracy {accuracy:.4f}  ({time.perf_counter() - started:.0f} s)")
    return model.eval()


def load_checkpoint(workload: Workload, path: str) -> nn.Module:
    if not os.path.isfile(path):
        raise WorkloadError("baseline.checkpoint", f"{path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling raises many types; a whole pickled module is one
        raise WorkloadError(
            "baseline.checkpoint",
            f"{path!r} is not a state_dict that loads with weights_only=True ({first_line(error, 200)})",
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = workload.make_model()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise WorkloadError(
            "baseline.checkpoint", f"{path!r} does not fit {workload.model_spec}: {first_line(error)}"
        ) from None
    return model.eval()


def get_baseline(
    workload: Workload, device: torch.device, *, checkpoint: str | None = None, recipe: TrainingRecipe | None = None,
    progress: Progress | None = None,
) -> Baseline:
    """The unmodified model on the CPU, in eval mode; trains and caches it when needed."""
    if checkpoint:
        return Baseline(load_checkpoint(workload, checkpoint), f"checkpoint:{checkpoint}")
    recipe = recipe or TrainingRecipe()
    path = cache_dir() / f"{cache_key(workload, recipe)}.pt"
    if path.is_file():
        model = workload.make_model()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return Baseline(model.eval(), f"cache:{path}")
    started = time.perf_counter()
    model = train(workload, recipe, device, progress).cpu()
    seconds = time.perf_counter() - started
    save_atomically(model.state_dict(), path)  # a killed run never leaves a half-written cache entry
    return Baseline(model, f"trained:{path}", seconds)
