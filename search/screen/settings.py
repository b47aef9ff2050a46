"""What a deployment setting and a pruning shape are to the screen, and how two settings
compare on the study's cost axes (with a margin, so measurement noise does not decide)."""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

from slimtune.spaces import SearchSpace
from slimtune.spaces.joint import DEPLOYMENT_FIELDS

Log = Callable[[str], None]

#: the recipe fields that make a deployment setting, and the pruning shape
DEPLOYMENT = DEPLOYMENT_FIELDS
SHAPE = ("prune_round_to", "prune_scope")
#: the study's objectives the screen can speak for (deployment changes them without training)
COST_AXES = ("latency_ms", "peak_memory_mb", "weight_mb")


def label(setting: dict[str, Any]) -> str:
    """`fp16 channels_last compile`, `bf16 contiguous int8_weight_only eager`."""
    words = [setting["precision"], setting["memory_format"]]
    if setting["quantization"] != "none":
        words.append(setting["quantization"])
    words.append(setting["runtime"])
    return " ".join(words)


def shape_label(shape: dict[str, Any]) -> str:
    return f"/{shape['prune_round_to']} {shape['prune_scope']}"


def cost_axes(objectives: dict[str, str]) -> list[str]:
    """The cost axes the study cares about (latency when it names none of them)."""
    axes = [axis for axis in COST_AXES if axis in objectives]
    if "latency_p95_ms" in objectives and "latency_ms" not in axes:
        axes.insert(0, "latency_ms")
    return axes or ["latency_ms"]


def settings_of(space: SearchSpace) -> list[dict[str, Any]]:
    return [dict(zip(DEPLOYMENT, values)) for values in itertools.product(*(getattr(space, f) for f in DEPLOYMENT))]


def shapes_of(space: SearchSpace) -> list[dict[str, Any]]:
    """Every pruning shape, multiples of 8 first (the budget may not reach the rest)."""
    shapes = [dict(zip(SHAPE, values)) for values in itertools.product(space.prune_round_to, space.prune_scope)]
    return sorted(shapes, key=lambda s: (s["prune_round_to"] % 8 != 0, -s["prune_round_to"] if s["prune_round_to"] <= 64 else 0))


def prunes(space: SearchSpace) -> bool:
    return space.prune_ratio is not None and space.prune_ratio[1] > 0


def wanted(space: SearchSpace, enabled: bool | None) -> bool:
    """`[screen] enabled`, or, when absent: whether there is anything to choose between."""
    if enabled is not None:
        return enabled
    return len(settings_of(space)) > 1


def dominates(better: dict[str, float], worse: dict[str, float], axes: list[str], margin: float) -> bool:
    """`better` is no worse than `worse` beyond the margin on every axis, and better by more
    than the margin on one. With a margin, this is not transitive; `verdicts` uses it only
    against settings on the exact front."""
    if any(better[a] > worse[a] * (1 + margin) for a in axes):
        return False
    return any(better[a] * (1 + margin) < worse[a] for a in axes)


def exact_front(points: dict[int, dict[str, float]], axes: list[str]) -> set[int]:
    def weakly(a: dict, b: dict) -> bool:
        return all(a[x] <= b[x] for x in axes) and any(a[x] < b[x] for x in axes)

    return {i for i, p in points.items() if not any(weakly(q, p) for j, q in points.items() if j != i)}


def why_dominated(worse: dict, better: dict, axes: list[str], better_label: str) -> str:
    """`6.1x slower than fp16 channels_last compile`, or what else it loses on."""
    worst = max(axes, key=lambda a: worse[a] / better[a] if better[a] > 0 else math.inf)
    ratio = worse[worst] / better[worst] if better[worst] > 0 else math.inf
    what = {"latency_ms": "slower than", "peak_memory_mb": "the peak memory of", "weight_mb": "the weights of"}[worst]
    return f"{ratio:.1f}x {what} {better_label}"
