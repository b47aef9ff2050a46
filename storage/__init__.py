"""The database: Optuna's RDB storage plus slimtune's own tables, behind one `Repository`."""

from .database import (
    DEFAULT_STORAGE, DatabaseMissing, StorageError, connect, has_optuna_schema, is_sqlite, normalize_url,
    optuna_storage, safe_url,
)
from .repository import Repository, TrialRecord
from .slots import Claim, SlotBook, Usage
from .sqlite import SQLiteBusy, single_process

__all__ = [
    "Claim", "DEFAULT_STORAGE", "DatabaseMissing", "Repository", "SQLiteBusy", "SlotBook", "StorageError",
    "TrialRecord", "Usage", "connect", "has_optuna_schema", "is_sqlite", "normalize_url", "optuna_storage",
    "safe_url", "single_process",
]
