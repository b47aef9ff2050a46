"""The screen as the study driver uses it: its budget, run once per study (or read back from
storage), and the search space narrowed to its survivors."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from slimtune.spaces import SearchSpace

from .settings import DEPLOYMENT, Log, settings_of, wanted
from .target import Screen


def narrow(space: SearchSpace, result: dict[str, Any]) -> SearchSpace:
    """The space with only the screen's survivors: never wider than `space` (explicit choices
    are the ceiling). The baseline keeps the runtime it is measured in even when the screen
    dropped it from the search."""
    kept = result["kept"]
    changes: dict[str, Any] = {}
    for name, values in kept.items():
        remaining = tuple(v for v in getattr(space, name) if v in values)
        if remaining:
            changes[name] = remaining
    if "runtime" in changes and changes["runtime"][0] != space.runtime[0]:
        changes["baseline_runtime"] = space.runtime[0]
    narrowed = dataclasses.replace(space, **changes)
    # a screen of version 1 (no "deployments") searched each factor on its own: a study it
    # screened keeps sampling that way when resumed, so its trials stay comparable
    settings = [tuple(setting) for setting in result.get("deployments", [])]
    settings = [s for s in settings if all(v in getattr(narrowed, f) for f, v in zip(DEPLOYMENT, s))]
    if settings and len(settings) < math.prod(len(getattr(narrowed, name)) for name in DEPLOYMENT):
        narrowed = dataclasses.replace(narrowed, deployments=tuple(settings))
    return narrowed


#: the screen's budget when neither `[screen] budget_s` nor the run's timeout says otherwise
DEFAULT_BUDGET_S = 180.0
#: its share of the run's `--timeout` when that is given
BUDGET_SHARE = 0.25


#: the share of the run's time left that the screen may take at most (when the baseline took long)
SHARE_OF_LEFT = 0.9


def budget_of(config: Any, run_timeout_s: float | None, time_left_s: float | None = None) -> tuple[float, float]:
    """(the screen's budget, one setting's hard limit) for `config`, the run's timeout and the
    time the run has left (the screen's time is the run's: the run's --timeout stops it too)."""
    budget = config.screen.budget_s or (BUDGET_SHARE * run_timeout_s if run_timeout_s else DEFAULT_BUDGET_S)
    if time_left_s is not None:
        budget = max(0.0, min(budget, SHARE_OF_LEFT * time_left_s))
    # a setting needs what a trial's compile needs (a cold ResNet-18 compile ran past 40 s on an H200)
    limit = config.screen.setting_timeout_s or min(config.budget.trial_timeout_s, 120.0)
    return budget, limit


def screen_target(evaluator: Any, space: SearchSpace, config: Any, log: Log = print,
                  run_timeout_s: float | None = None, time_left_s: float | None = None) -> dict[str, Any]:
    """Run the screen for `config`'s study over `space` (the probed space) and return its result."""
    budget, limit = budget_of(config, run_timeout_s, time_left_s)
    return Screen(evaluator, space, objectives=config.objectives, max_accuracy_drop=config.constraints.max_accuracy_drop,
                  max_balanced_accuracy_drop=config.constraints.max_balanced_accuracy_drop,
                  budget_s=budget, setting_timeout_s=limit, margin=config.screen.margin, log=log).run()


def for_study(config: Any, space: SearchSpace, evaluator: Any, stored: dict[str, Any] | None, *,
              existing: bool, log: Log = print, run_timeout_s: float | None = None,
              time_left_s: float | None = None) -> dict[str, Any] | None:
    """The study's screen: the stored one when there is one (a resumed study, a second
    worker), else a new one for a study without results yet (new, or created over HTTP) that
    wants it; None: search `space` as it is (a study that already has results without a screen
    keeps the space it was searched in)."""
    if stored is not None:
        log(f"screen: read from storage (measured once for this study, {stored['seconds']:.0f} s)")
        return stored
    if existing or not wanted(space, config.screen.enabled):
        return None
    log(f"screen: measuring {len(settings_of(space))} deployment settings "
        f"(budget {budget_of(config, run_timeout_s, time_left_s)[0]:.0f} s)")
    return screen_target(evaluator, space, config, log, run_timeout_s, time_left_s)
