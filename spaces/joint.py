"""The joint search space: what each knob declares, sampled define-by-run.

A knob asks the trial for a value only when it applies (distillation only when something
was pruned), so conditional parameters are plain `if`s, as Optuna intends.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna

from .recipe import Recipe

DEFAULT_KD_ALPHA = 0.5


@dataclass(frozen=True)
class SearchSpace:
    """Ranges and choices per knob; a knob with a single choice is fixed, not searched."""

    prune_ratio: tuple[float, float] | None = None
    prune_importance: tuple[str, ...] = ("l2",)
    kd_temperature: tuple[float, float] | None = None
    kd_alpha: tuple[float, float] | None = None
    quantization: tuple[str, ...] = ("none",)
    precision: tuple[str, ...] = ("fp32",)
    runtime: tuple[str, ...] = ("eager",)
    finetune_steps: int = 0

    def suggest(self, trial: optuna.Trial) -> Recipe:
        """Sample one recipe. Fine-tuning (with KD when a temperature range is given) is
        sampled only after pruning: quantization here is post-training, so fine-tuning an
        unpruned model would only retrain the teacher, and there is nothing to recover."""
        prune_ratio = 0.0
        if self.prune_ratio is not None and self.prune_ratio[1] > 0:
            prune_ratio = trial.suggest_float("prune_ratio", *self.prune_ratio)
        fields: dict[str, Any] = {"prune_ratio": prune_ratio}
        if prune_ratio > 0:
            fields["prune_importance"] = _choose(trial, "prune_importance", self.prune_importance)
            if self.finetune_steps > 0:
                fields["finetune_steps"] = self.finetune_steps
                if self.kd_temperature is not None:
                    fields["kd_temperature"] = trial.suggest_float("kd_temperature", *self.kd_temperature, log=True)
                    fields["kd_alpha"] = (
                        trial.suggest_float("kd_alpha", *self.kd_alpha) if self.kd_alpha else DEFAULT_KD_ALPHA
                    )
        fields["quantization"] = _choose(trial, "quantization", self.quantization)
        fields["precision"] = _choose(trial, "precision", self.precision)
        fields["runtime"] = _choose(trial, "runtime", self.runtime)
        return Recipe(**fields)

    def contains_baseline(self) -> bool:
        """Whether the unmodified model is a point of this space (prune 0, no quantization, fp32)."""
        prune_ok = self.prune_ratio is None or self.prune_ratio[0] == 0.0 or self.prune_ratio[1] == 0.0
        return prune_ok and "none" in self.quantization and "fp32" in self.precision

    def baseline_params(self) -> dict[str, Any]:
        """Params that make `suggest` return the unmodified model (enqueued as trial 0).
        Only meaningful when `contains_baseline()`; otherwise trial 0 is measured from
        `baseline_recipe()` without sampling."""
        params: dict[str, Any] = {}
        if self.prune_ratio is not None and self.prune_ratio[1] > 0:
            params["prune_ratio"] = 0.0
        for name, default in (("quantization", "none"), ("precision", "fp32")):
            if len(getattr(self, name)) > 1 and default in getattr(self, name):
                params[name] = default
        if len(self.runtime) > 1:
            params["runtime"] = self.runtime[0]
        return params

    def baseline_recipe(self) -> Recipe:
        return Recipe(runtime=self.runtime[0])

    def without(self, knob: str, value: str) -> "SearchSpace":
        """This space with one categorical choice removed (the capability probe uses it)."""
        remaining = tuple(v for v in getattr(self, knob) if v != value)
        return dataclasses.replace(self, **{knob: remaining})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choose(trial: optuna.Trial, name: str, choices: tuple[str, ...]) -> str:
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))
