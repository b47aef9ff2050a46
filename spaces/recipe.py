"""A compression recipe: plain data that fully describes how to rebuild a candidate.

A trial's Optuna params become a `Recipe`; export, the dashboard and the evaluator all read
the same object, so there is exactly one description of what a candidate is. Its fields are
the registered knobs' `recipe_fields`, each defaulting to the value that leaves the model
unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .registry import KNOBS, recipe_defaults


class _RecipeMethods:
    @property
    def is_baseline(self) -> bool:
        return self == type(self)(runtime=self.runtime)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        """Unknown keys are ignored and missing ones take their baseline value, so a recipe
        stored before a knob existed still loads (as "that knob left alone")."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def describe(self, measured: dict[str, Any] | None = None) -> str:
        """Short human-readable form for tables: only what differs from the baseline. With the
        trial's stored measurement, a quantization says what it covered, e.g.
        "fp8_dynamic (fc only, 0.05% of weights)" (measurements stored before the share was
        recorded give the layer count only)."""
        words = [word for knob in KNOBS for word in knob.describe(self)]
        if measured and self.quantization != "none" and "quantized_layers" in measured:
            from .quantization import coverage

            covered = coverage(measured["quantized_layers"], measured.get("quantized_weight_share"),
                               measured.get("weight_layers"))
            words = [f"{word} ({covered})" if word == self.quantization else word for word in words]
        return ", ".join(words) or "baseline"


Recipe = dataclasses.make_dataclass(
    "Recipe",
    [(name, Any, dataclasses.field(default=value)) for name, value in recipe_defaults().items()],
    bases=(_RecipeMethods,),
    frozen=True,
)
Recipe.__module__ = __name__  # picklable by name (make_dataclass's module= is 3.12+)
Recipe.__doc__ = "What to do to the baseline; one field per knob setting (see `registry.KNOBS`)."
