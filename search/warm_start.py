"""Warm start: the recipes of another study's feasible front become a new study's first trials
(`slimtune run FILE --warm-start OTHER [--warm-storage URL]`), for instance the same model
measured before on another GPU.

A recipe is enqueued only if the new target can run it and the new study's space contains it:
- a value the capability probe removed on this target (say `cudagraphs` on a CPU) skips the
  recipe with the probe's reason;
- otherwise the recipe is replayed through the study's own `SearchSpace.suggest`, with a trial
  that answers from the recipe (`RecipeTrial`): every parameter the space asks for must be set
  by the recipe and lie in the range or choices the space gives it, and every knob the space
  fixes must match. This asks the space itself, so it keeps working when knobs are added.
  What is not a knob (the fine-tuning budget) comes from the new study.
Skipped recipes are listed with their reasons, and both lists are kept in the study's user
attribute `WARM_START_ATTR`. The source is read before anything is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import optuna

from slimtune.spaces import Recipe, Removal, SearchSpace
from slimtune.storage import StorageError, safe_url

from slimtune.search.config import StudyFileError
from slimtune.search.results import StudyNotFound, open_study

#: the Optuna study user attribute that records where the first trials came from
WARM_START_ATTR = "slimtune_warm_start"


class WarmStartError(StudyFileError):
    """A --warm-start that cannot be used; one line, shown like a study file error (exit 2)."""


@dataclass(frozen=True)
class WarmStart:
    study: str
    storage: str | None = None  # None: the new study's own storage


@dataclass
class WarmStartPlan:
    source: str
    enqueue: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (source trial, params)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (source trial, reason)


def load_front(warm_start: WarmStart, storage_url: str, study_name: str) -> tuple[str, list[tuple[int, Recipe | None]]]:
    """The source study's feasible front as (trial number, recipe); raises `WarmStartError`."""
    url = warm_start.storage or storage_url
    if warm_start.study == study_name and url == storage_url:
        raise WarmStartError(f"--warm-start {warm_start.study!r}: that is the study being run; name another study")
    try:
        study, repository = open_study(warm_start.study, url)
    except (StudyNotFound, StorageError) as error:
        raise WarmStartError(f"--warm-start {warm_start.study!r}: {error}") from None
    records = {r.trial_number: r for r in repository.trials(warm_start.study)}
    front = []
    for trial in sorted(study.best_trials, key=lambda t: t.number):
        recipe = trial.user_attrs.get("recipe") or (records[trial.number].recipe if trial.number in records else None)
        front.append((trial.number, Recipe.from_dict(recipe) if recipe else None))
    return f"{warm_start.study!r} in {safe_url(url)!r}", front


class _Unfit(Exception):
    """A parameter the space asks for that the recipe does not have, or has outside its range."""


class RecipeTrial:
    """Answers a `SearchSpace.suggest` from a recipe's fields, as Optuna's `FixedTrial` does, but
    stops at the first value the space would not sample and says which and why (FixedTrial
    only warns on an out-of-range value, and its errors do not name the parameter)."""

    def __init__(self, recipe: Recipe):
        self.values = {k: v for k, v in recipe.to_dict().items() if v is not None}
        self.params: dict[str, Any] = {}

    def _take(self, name: str, fits: bool, allowed: str) -> Any:
        if name not in self.values:
            raise _Unfit(f"this study searches {name}, which the recipe does not set")
        value = self.values[name]
        if not fits(value):
            raise _Unfit(f"{name}={value!r} is {allowed}")
        self.params[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        return self._take(name, lambda v: isinstance(v, (int, float)) and low <= v <= high,
                          f"outside this study's range [{low:g}, {high:g}]")

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._take(name, lambda v: isinstance(v, int) and low <= v <= high,
                          f"outside this study's range [{low}, {high}]")

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._take(name, lambda v: v in choices,
                          "not among this study's choices (" + ", ".join(map(str, choices)) + ")")


def _knobs(space: SearchSpace) -> set[str]:
    """Fields of the space that are choices or ranges (not settings such as finetune_steps)."""
    return {f.name for f in dataclasses.fields(space) if isinstance(getattr(space, f.name), (tuple, type(None)))}


def space_params(space: SearchSpace, recipe: Recipe) -> tuple[dict[str, Any] | None, str | None]:
    """The Optuna params that make `space.suggest` rebuild `recipe`, or (None, why not)."""
    trial = RecipeTrial(recipe)
    try:
        rebuilt = space.suggest(trial)  # type: ignore[arg-type]  # duck-typed trial
    except _Unfit as unfit:
        return None, str(unfit)
    knobs = _knobs(space)
    for name, value in recipe.to_dict().items():
        if name in knobs and getattr(rebuilt, name) != value:
            return None, f"{name}={value!r}: this study fixes it at {getattr(rebuilt, name)!r}"
    return dict(trial.params), None


def plan_warm_start(
    source: str, front: list[tuple[int, Recipe | None]], space: SearchSpace, removals: list[Removal]
) -> WarmStartPlan:
    """Which front recipes the probed `space` of this target can take, and why the others not."""
    plan = WarmStartPlan(source)
    seen: dict[tuple, int] = {}
    for number, recipe in front:
        if recipe is None:
            plan.skipped.append((number, "no recipe recorded"))
            continue
        if recipe.is_baseline:
            plan.skipped.append((number, "the baseline, which is trial 0 anyway"))
            continue
        removed = next((r for r in removals if getattr(recipe, r.knob, None) == r.value), None)
        if removed is not None:
            plan.skipped.append((number, f"{removed.knob}={removed.value!r} cannot run on this target: {removed.reason}"))
            continue
        params, reason = space_params(space, recipe)
        if params is None:
            plan.skipped.append((number, reason or "not in this study's space"))
            continue
        key = tuple(sorted(params.items()))
        if key in seen:
            plan.skipped.append((number, f"same parameters as source trial {seen[key]}"))
            continue
        seen[key] = number
        plan.enqueue.append((number, params))
    return plan


def enqueue_warm_start(study: optuna.Study, plan: WarmStartPlan, log: Callable[[str], None]) -> None:
    """Enqueue the plan's recipes (after the baseline) and say what was skipped and why."""
    for number, params in plan.enqueue:
        study.enqueue_trial(params, user_attrs={"warm_start": {"source": plan.source, "trial": number}})
    study.set_user_attr(WARM_START_ATTR, {
        "source": plan.source,
        "enqueued": [n for n, _ in plan.enqueue],
        "skipped": [{"trial": n, "reason": reason} for n, reason in plan.skipped],
    })
    log(f"warm start from {plan.source}: {len(plan.enqueue)} front recipes enqueued, {len(plan.skipped)} skipped")
    for number, reason in plan.skipped:
        log(f"  skipped source trial {number}: {reason}")

