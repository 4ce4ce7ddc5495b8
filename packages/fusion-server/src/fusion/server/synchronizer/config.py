"""Configuration of the synchronizer."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["FusionSynchronizerConfig"]


class FusionSynchronizerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a service writes under ``synchronizer:`` in its configuration."""

    interval: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """Seconds between two passes over every case."""
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4
    """Most cases synchronised at the same time."""
    case_timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Seconds one case may take before its sync is cancelled (None: no limit)."""
    on_events: bool = True
    """Also synchronise a case as soon as one of its events arrives."""
    events_channel: str = "events"
    """Service-wide event channel (the event API publishes every event there too)."""
    exclusive: bool = True
    """With a shared store, one replica at a time syncs a given case (a store lock)."""
    lock_lease: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """Seconds the lock of a case is held at most when ``case_timeout`` is None."""
    stop_timeout: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    """Seconds running syncs get to finish on stop before they are cancelled."""
