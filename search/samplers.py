"""Optuna samplers by name. Named explicitly: Optuna's default changes between releases."""

from __future__ import annotations

from typing import Any

import optuna

SAMPLERS = ("tpe", "nsga2", "gp", "random")


def tpe_settings(n_trials: int) -> dict[str, Any]:
    """slimtune's TPE arguments. multivariate + group: models the knobs jointly and copes with
    the conditional distillation params; constant_liar keeps parallel workers from sampling one
    point; a third of the budget (at most 10) as random start-up trials. The sampler benchmark
    (`benchmarks/search_efficiency.py tpe-settings`) replays variations of these against them."""
    return {"multivariate": True, "group": True, "constant_liar": True,
            "n_startup_trials": min(10, max(3, n_trials // 3))}


def make_sampler(name: str, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **tpe_settings(n_trials))
    if name == "nsga2":
        # A population of at most a third of the budget, so at least three generations run.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n_trials // 3)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler={name!r}; allowed: {', '.join(SAMPLERS)}")
