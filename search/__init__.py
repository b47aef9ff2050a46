"""The Optuna side: study files, creating/resuming studies, samplers, reports, the CLI, and
the Python API (`run`, `pareto`, `trials`)."""

from .api import pareto, run, trials
from .config import StudyConfig, StudyFileError, load_config

__all__ = ["StudyConfig", "StudyFileError", "load_config", "pareto", "run", "trials"]
