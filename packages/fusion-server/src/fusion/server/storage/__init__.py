"""Storage of a Fusion server: the FusionStorage interface and its SQLite default."""

from fusion.server.storage.base import CaseExistsError, CaseNotFoundError, FusionStorage

__all__ = [
    "CaseExistsError",
    "CaseNotFoundError",
    "FusionStorage",
]
