"""slimtune: multi-objective search over compression recipes, measured on the target.

The Python API mirrors the CLI:

    import slimtune
    study = slimtune.run("studies/digits.toml", storage="sqlite:///slimtune.db")
    slimtune.pareto("digits-cnn")   # DataFrame: the feasible front against the baseline
    slimtune.trials("digits-cnn")   # DataFrame: every trial, its recipe and measurements
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import pandas as pd

__version__ = "0.1.0"
DEFAULT_STORAGE = "sqlite:///slimtune.db"


def run(study_file: str, storage: str = DEFAULT_STORAGE, *, timeout: float | None = None,
        progress: bool = False, **overrides: Any) -> "optuna.Study":
    """Run (or resume) the study a file describes; `overrides` are study fields such as n_trials=5."""
    from slimtune.search.config import load_config
    from slimtune.search.runner import run_study

    config = load_config(study_file, {f"study.{k}": v for k, v in overrides.items()})
    return run_study(config, storage, timeout=timeout, progress=progress, log=lambda _: None)


def pareto(study_name: str, storage: str = DEFAULT_STORAGE) -> "pd.DataFrame":
    from slimtune.search.report import open_study, pareto_front

    return pareto_front(*open_study(study_name, storage))


def trials(study_name: str, storage: str = DEFAULT_STORAGE) -> "pd.DataFrame":
    from slimtune.search.report import open_study, trials_frame

    return trials_frame(*open_study(study_name, storage))


__all__ = ["DEFAULT_STORAGE", "pareto", "run", "trials"]
