"""The database: Optuna's RDB storage plus slimtune's own tables, behind one `Repository`."""

from .database import DEFAULT_STORAGE, StorageError, connect, optuna_storage, safe_url
from .repository import Repository, TrialRecord

__all__ = ["DEFAULT_STORAGE", "Repository", "StorageError", "TrialRecord", "connect", "optuna_storage", "safe_url"]
