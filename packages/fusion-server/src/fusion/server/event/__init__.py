"""Live case events: server-sent events with resume, presence, and webhooks."""

from fusion.server.event.api import (
    SUBSCRIBE_EVENTS,
    CaseReadAuthorizer,
    FusionEventAPI,
    WebhookNotAllowedError,
)
from fusion.server.event.config import FusionEventConfig
from fusion.server.event.publisher import CaseEventPublisher
from fusion.server.event.watchers import CaseWatchers

__all__ = [
    "SUBSCRIBE_EVENTS",
    "CaseEventPublisher",
    "CaseReadAuthorizer",
    "CaseWatchers",
    "FusionEventAPI",
    "FusionEventConfig",
    "WebhookNotAllowedError",
]
