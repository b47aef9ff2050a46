"""The Python API, the same operations as the CLI:

    from slimtune.search import run, pareto, trials
    study = run("studies/digits.toml", storage="sqlite:///slimtune.db", n_trials=10)
    pareto("digits-cnn")   # DataFrame: the feasible front against the baseline
    trials("digits-cnn")   # DataFrame: every trial, its recipe, measurements and reasons
"""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd

from slimtune.storage import DEFAULT_STORAGE

from slimtune.search.config import load_config
from slimtune.search.results import open_study, pareto_front, trials_frame
from slimtune.search.runner import run_study
from slimtune.search.warm_start import WarmStart


def run(study_file: str, storage: str = DEFAULT_STORAGE, *, timeout: float | None = None,
        progress: bool = False, warm_start: str | None = None, warm_storage: str | None = None,
        **overrides: Any) -> optuna.Study:
    """Run (or resume) the study a file describes; `overrides` are [study] fields, e.g. n_trials=5.
    `warm_start` names a study (in `warm_storage`, default `storage`) whose front seeds a new study.
    `timeout` bounds the whole call as `slimtune run --timeout` does; when it ends the call before
    any trial could run, `slimtune.search.deadline.TimedOut` (a KeyboardInterrupt) is raised."""
    config = load_config(study_file, {f"study.{k}": v for k, v in overrides.items()})
    source = WarmStart(warm_start, warm_storage) if warm_start else None
    return run_study(config, storage, timeout=timeout, progress=progress, log=lambda _: None, warm_start=source)


def pareto(study_name: str, storage: str = DEFAULT_STORAGE) -> pd.DataFrame:
    return pareto_front(*open_study(study_name, storage))


def trials(study_name: str, storage: str = DEFAULT_STORAGE) -> pd.DataFrame:
    return trials_frame(*open_study(study_name, storage))
