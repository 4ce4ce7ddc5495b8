"""The case API: every case route of PROTOCOL.md."""

from fusion.server.case.api import (
    ATTACH_CASE,
    CREATE_CASE,
    DELETE_CASE,
    ENUMERATE_CASES,
    RETRIEVE_CASE,
    UPDATE_CASE,
    CaseContext,
    FusionCaseAPI,
)
from fusion.server.case.config import FusionCaseAPIConfig

__all__ = [
    "ATTACH_CASE",
    "CREATE_CASE",
    "DELETE_CASE",
    "ENUMERATE_CASES",
    "RETRIEVE_CASE",
    "UPDATE_CASE",
    "CaseContext",
    "FusionCaseAPI",
    "FusionCaseAPIConfig",
]
