"""Fusion concepts: the msgspec Structs shared by Fusion servers and clients."""

from fusion.concept.__about__ import __version__
from fusion.concept._concept import Concept, ConceptError, json_decoder, utcnow
from fusion.concept.case import Case, UTCDateTime
from fusion.concept.event import CaseT, Event
from fusion.concept.identity import Identities, Identity
from fusion.concept.misc import (
    AnalyzerInfo,
    AuthInfo,
    Constant,
    Info,
    PendingDownloadKey,
    Priority,
    Status,
)

__all__ = [
    "AnalyzerInfo",
    "AuthInfo",
    "Case",
    "CaseT",
    "Concept",
    "ConceptError",
    "Constant",
    "Event",
    "Identities",
    "Identity",
    "Info",
    "PendingDownloadKey",
    "Priority",
    "Status",
    "UTCDateTime",
    "__version__",
    "json_decoder",
    "utcnow",
]
