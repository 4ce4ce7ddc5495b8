"""Typed application keys shared by every API of a Fusion server.

APIs find each other and the shared services through these keys, so a service
can replace one piece (its storage, its auth API) without the others noticing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from fusion.concept import Case
from fusion.helper.store import SharedStore

if TYPE_CHECKING:
    from fusion.helper.pubsub import FusionPubSub
    from fusion.server.auth.api import FusionAuthAPI
    from fusion.server.case.api import FusionCaseAPI
    from fusion.server.config import FusionServerConfig
    from fusion.server.constant.api import FusionConstantAPI
    from fusion.server.download.api import FusionDownloadAPI
    from fusion.server.storage import FusionStorage

__all__ = [
    "AUTH",
    "CASE_API",
    "CONFIG",
    "CONSTANT",
    "DOWNLOADS",
    "EVENTS",
    "PUBSUB",
    "STORAGE",
    "STORE",
    "CaseEventSink",
]


class CaseEventSink(Protocol):
    """Receives the case events the case API emits (the event API implements it)."""

    async def notify(self, category: str, case: Case, ext: dict[str, Any] | None = None) -> None:
        """Publish ``category`` about ``case`` to the case's watchers and webhooks."""


CONFIG: web.AppKey[FusionServerConfig] = web.AppKey("fusion_config")
STORE: web.AppKey[SharedStore] = web.AppKey("fusion_store", SharedStore)
PUBSUB: web.AppKey[FusionPubSub] = web.AppKey("fusion_pubsub")
STORAGE: web.AppKey[FusionStorage[Any]] = web.AppKey("fusion_storage")
AUTH: web.AppKey[FusionAuthAPI] = web.AppKey("fusion_auth")
CASE_API: web.AppKey[FusionCaseAPI[Any]] = web.AppKey("fusion_case_api")
"""The case API, so a service's route finds :meth:`FusionCaseAPI.authorize_case`."""
CONSTANT: web.AppKey[FusionConstantAPI[Any]] = web.AppKey("fusion_constant")
EVENTS: web.AppKey[CaseEventSink] = web.AppKey("fusion_events")
DOWNLOADS: web.AppKey[FusionDownloadAPI] = web.AppKey("fusion_downloads")
