"""A compression recipe: plain data that fully describes how to rebuild a candidate.

A trial's Optuna params become a `Recipe`; export, the dashboard and the evaluator all read
the same object, so there is exactly one description of what a candidate is.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """What to do to the baseline, in the order the evaluator applies it.

    `finetune_steps == 0` means not fine-tuned (nothing to recover). When fine-tuned, the loss
    is KD at `kd_temperature` with weight `kd_alpha`, or plain cross-entropy when
    `kd_temperature is None` or `kd_alpha == 0`.
    """

    prune_ratio: float = 0.0
    prune_importance: str = "l2"
    kd_temperature: float | None = None
    kd_alpha: float = 0.0
    finetune_steps: int = 0
    quantization: str = "none"
    precision: str = "fp32"
    runtime: str = "eager"

    @property
    def is_baseline(self) -> bool:
        return self == Recipe(runtime=self.runtime)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def describe(self) -> str:
        """Short human-readable form for tables: only what differs from the baseline."""
        parts = []
        if self.prune_ratio > 0:
            parts.append(f"prune {self.prune_ratio:.2f}")
        if self.finetune_steps:
            if self.kd_temperature is not None and self.kd_alpha > 0:
                parts.append(f"KD T={self.kd_temperature:.1f} a={self.kd_alpha:.2f}")
            else:
                parts.append("fine-tune")
        if self.quantization != "none":
            parts.append(self.quantization)
        if self.precision != "fp32":
            parts.append(self.precision)
        if self.runtime != "eager":
            parts.append(self.runtime)
        return ", ".join(parts) or "baseline"
