"""Storage of a Fusion server: the FusionStorage interface and its SQLite default,
per-object directories for service files, a service's own SQLite tables, and the
synchronizers' sync tree."""

from fusion.server.storage.base import (
    CaseConflictError,
    CaseExistsError,
    CaseNotFoundError,
    FusionStorage,
    VersionedCase,
)
from fusion.server.storage.concept_storage import ConceptStorage
from fusion.server.storage.sqlite import SQLiteStorage, StorageClosedError
from fusion.server.storage.sync_tree import SyncLayout, SyncState, SyncTree, case_folder_name
from fusion.server.storage.tables import RowExistsError, SQLiteTable

__all__ = [
    "CaseConflictError",
    "CaseExistsError",
    "CaseNotFoundError",
    "ConceptStorage",
    "FusionStorage",
    "RowExistsError",
    "SQLiteStorage",
    "SQLiteTable",
    "StorageClosedError",
    "SyncLayout",
    "SyncState",
    "SyncTree",
    "VersionedCase",
    "case_folder_name",
]
