"""The database: Optuna's RDB storage plus slimtune's own tables, behind one `Repository`."""

from .database import DEFAULT_STORAGE, DatabaseMissing, StorageError, connect, has_optuna_schema, optuna_storage, safe_url
from .repository import Repository, TrialRecord

__all__ = ["DEFAULT_STORAGE", "DatabaseMissing", "Repository", "StorageError", "TrialRecord", "connect", "has_optuna_schema", "optuna_storage", "safe_url"]
