"""Storage of a Fusion server: the FusionStorage interface and its SQLite default."""

from fusion.server.storage.base import CaseExistsError, CaseNotFoundError, FusionStorage
from fusion.server.storage.sqlite import SQLiteStorage, StorageClosedError

__all__ = [
    "CaseExistsError",
    "CaseNotFoundError",
    "FusionStorage",
    "SQLiteStorage",
    "StorageClosedError",
]
