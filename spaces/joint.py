"""The joint search space: each registered knob's ranges and choices, sampled define-by-run.

A knob asks the trial for a value only when it applies (distillation only when something
was pruned), so conditional parameters are plain `if`s, as Optuna intends. The fields of
`SearchSpace` are the knobs' study-file fields (`registry.study_fields()`), plus the
fine-tuning budget that distillation reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from .distillation import DEFAULT_KD_ALPHA  # noqa: F401  (re-exported)
from .recipe import Recipe
from .knob import choose
from .registry import KNOBS, recipe_defaults, study_fields

#: the fields that make one deployment setting; `SearchSpace.deployments` lists allowed ones
DEPLOYMENT_FIELDS = ("precision", "memory_format", "quantization", "runtime")
#: the Optuna param that picks one of `deployments`
DEPLOYMENT_PARAM = "deployment"


def deployment_label(setting: tuple) -> str:
    """One categorical value per setting, readable in Optuna's tables: `fp16/channels_last/none/compile`."""
    return "/".join(setting)


class _SpaceMethods:
    def suggest(self, trial: optuna.Trial) -> Recipe:
        """Sample one recipe: every knob in registry order adds its values. With `deployments`
        (the target screen's survivors), the setting is one categorical choice and each of its
        knobs sees its value fixed."""
        fields: dict[str, Any] = {}
        space = self
        if self.deployments:
            chosen = choose(trial, DEPLOYMENT_PARAM, tuple(deployment_label(s) for s in self.deployments))
            space = dataclasses.replace(self, deployments=None,
                                        **{f: (v,) for f, v in zip(DEPLOYMENT_FIELDS, chosen.split("/"))})
        for knob in KNOBS:
            knob.suggest(trial, space, fields)
        return Recipe(**fields)

    def contains_baseline(self) -> bool:
        """Whether the unmodified model is a point of this space: every knob can take its
        baseline value (prune 0, no quantization, fp32, contiguous...), in its runtime."""
        if self.baseline_runtime is not None and self.baseline_runtime not in self.runtime:
            return False
        if self.deployments and self._baseline_setting() not in self.deployments:
            return False
        return all(knob.contains_baseline(self) for knob in KNOBS)

    def _baseline_setting(self) -> tuple:
        defaults = recipe_defaults()
        return tuple(self.runtime[0] if f == "runtime" else defaults[f] for f in DEPLOYMENT_FIELDS)

    def baseline_params(self) -> dict[str, Any]:
        """Params that make `suggest` return the unmodified model (enqueued as trial 0).
        Only meaningful when `contains_baseline()`; otherwise trial 0 is measured from
        `baseline_recipe()` without sampling."""
        params = {name: value for knob in KNOBS for name, value in knob.baseline_params(self).items()}
        if self.deployments:
            params = {k: v for k, v in params.items() if k not in DEPLOYMENT_FIELDS}
            if len(self.deployments) > 1:
                params[DEPLOYMENT_PARAM] = deployment_label(self._baseline_setting())
        return params

    def baseline_recipe(self) -> Recipe:
        return Recipe(runtime=self.baseline_runtime or self.runtime[0])

    def without(self, knob: str, value: Any) -> "SearchSpace":
        """This space with one categorical choice removed (the capability probe uses it)."""
        remaining = tuple(v for v in getattr(self, knob) if v != value)
        return dataclasses.replace(self, **{knob: remaining})

    def allows(self, recipe: Recipe) -> str | None:
        """Why `recipe` is outside this space (a warm start from another target), or None."""
        for field in study_fields():
            if field.kind != "choices":
                continue
            value = getattr(recipe, field.name, None)
            default = recipe_defaults().get(field.name)
            choices = getattr(self, field.name)
            if value not in choices and value != default:
                return f"{field.name}={value!r} is not among this target's choices {list(choices)}"
        if self.deployments:
            setting = tuple(getattr(recipe, f) for f in DEPLOYMENT_FIELDS)
            if setting not in self.deployments:
                return f"{deployment_label(setting)} is not among the settings the target screen kept"
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _space_field(field) -> tuple[str, Any, Any]:
    if field.kind == "range":
        return field.name, Any, dataclasses.field(default=field.default)
    return field.name, Any, dataclasses.field(default=tuple(field.default))


SearchSpace = dataclasses.make_dataclass(
    "SearchSpace",
    [_space_field(field) for field in study_fields()] + [
        ("finetune_steps", int, dataclasses.field(default=0)),
        # the runtime the baseline is measured in, when the target screen dropped it from the search
        ("baseline_runtime", Any, dataclasses.field(default=None)),
        # the target screen's surviving settings (DEPLOYMENT_FIELDS values), searched as one
        # choice; None: each of those fields is sampled from its own choices
        ("deployments", Any, dataclasses.field(default=None)),
    ],
    bases=(_SpaceMethods,),
    frozen=True,
)
SearchSpace.__module__ = __name__  # picklable by name (make_dataclass's module= is 3.12+)
SearchSpace.__doc__ = "Ranges (None: not searched) and choices (one: fixed) per knob field."
