"""Small concepts of the protocol: info, constant, auth info, downloads, analyzers."""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from uuid import UUID

import msgspec

from fusion.concept._concept import Concept

__all__ = [
    "AnalyzerInfo",
    "AuthInfo",
    "Constant",
    "Info",
    "PendingDownloadKey",
    "Priority",
    "Status",
]


class Status(StrEnum):
    """Analysis status."""

    PENDING = "pending"
    QUEUED = "queued"
    EXTRACTING = "extracting"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILURE = "failure"


class Priority(StrEnum):
    """Analysis priority."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Info(Concept, kw_only=True):
    """``{"api", "version"}``: what a service is."""

    api: str
    version: str


class Constant(Concept, kw_only=True):
    """The service constant; services subclass it with fields of their own."""

    banner: str | None = None
    allow_empty_acs: bool = True


class AuthInfo(Concept, kw_only=True):
    """``{"type", "parameters"}``: how to log in (never anything secret)."""

    type: str
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class PendingDownloadKey(Concept, kw_only=True):
    """``{"guid", "token"}``: a one-time download key."""

    guid: UUID
    token: str


class AnalyzerInfo(Concept, kw_only=True):
    """``{"name", "tags", "version"}``."""

    name: str
    tags: set[str] = msgspec.field(default_factory=set)
    version: str
