"""The Optuna side: study files, creating/resuming studies, samplers, reports, the CLI, and
the Python API (`run`, `pareto`, `trials`, `export`, `load_exported`)."""

from slimtune.search.api import pareto, run, trials
from slimtune.search.config import StudyConfig, StudyFileError, load_config
from . import export  # a callable module: `export(...)` and `export.export(...)` are the same function
from slimtune.search.export import ExportError, ExportFailed, ExportResult
from slimtune.objectives.artifacts import ArtifactError, load_exported

__all__ = [
    "ArtifactError", "ExportError", "ExportFailed", "ExportResult", "StudyConfig", "StudyFileError", "export",
    "load_config", "load_exported", "pareto", "run", "trials",
]
