"""Live case events: an async iterator over the server's event stream."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any, TypeVar, overload
from uuid import UUID

import msgspec

from fusion.client.api import case_guid_str
from fusion.client.client import FusionClient
from fusion.client.errors import FusionAPIError, FusionConnectionError
from fusion.concept import Case, Event, json_decoder

__all__ = ["FusionEventAPIClient"]

_LOGGER = logging.getLogger("fusion.client")

CaseT = TypeVar("CaseT", bound=Case)

# Answers worth retrying: the server (or a proxy in front) is busy or restarting.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class FusionEventAPIClient:
    """``/api/events/case/{case_guid}``: follow a case's events.

    ``initial_delay`` and ``max_delay`` (seconds) bound the exponential
    backoff between reconnections; a ``retry:`` field from the server
    replaces the initial delay.
    """

    def __init__(
        self, client: FusionClient, *, initial_delay: float = 0.5, max_delay: float = 30.0
    ) -> None:
        self.client = client
        self.initial_delay = initial_delay
        self.max_delay = max_delay

    @overload
    def subscribe(
        self,
        case_guid: UUID | str,
        *,
        last_event_id: str | None = None,
        idle_timeout: float | None = None,
        max_retries: int | None = None,
    ) -> AsyncIterator[Event[Case]]: ...

    @overload
    def subscribe(
        self,
        case_guid: UUID | str,
        case_type: type[CaseT],
        *,
        last_event_id: str | None = None,
        idle_timeout: float | None = None,
        max_retries: int | None = None,
    ) -> AsyncIterator[Event[CaseT]]: ...

    async def subscribe(
        self,
        case_guid: UUID | str,
        case_type: type[Any] = Case,
        *,
        last_event_id: str | None = None,
        idle_timeout: float | None = None,
        max_retries: int | None = None,
    ) -> AsyncIterator[Event[Any]]:
        """Yield the case's events until the caller stops iterating (or is cancelled).

        The first connection must succeed: its errors are raised as they are
        (wrong URL, 401, 403, 404...). After that, a dropped connection, a
        stream that ends or a 429/5xx answer is retried with backoff, sending
        ``Last-Event-ID`` so the server replays what was missed. Comment lines
        (keepalives) are ignored. ``idle_timeout`` (seconds) treats a silent
        connection as dropped; ``max_retries`` bounds consecutive failed
        reconnections (``None``: forever).
        """
        # Lazy: only a subscription parses an event stream.
        from fusion.helper.sse import iter_sse

        path = f"/api/events/case/{case_guid_str(case_guid)}"
        decoder = json_decoder(Event[case_type])  # type: ignore[valid-type]
        last_id = last_event_id
        delay = self.initial_delay
        base_delay = self.initial_delay
        connected = False
        failures = 0
        while True:
            streaming = False
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                async with self.client.stream(
                    "GET", self.client.url(path), headers=headers, sock_read=idle_timeout
                ) as response:
                    if response.content_type != "text/event-stream":
                        raise FusionAPIError(
                            response.status,
                            f"expected an event stream, got {response.content_type or 'nothing'}",
                        )
                    connected = streaming = True
                    failures = 0
                    async for sse in iter_sse(response.content):
                        if sse.retry is not None:
                            base_delay = min(sse.retry / 1000, self.max_delay)
                        if sse.id is not None:
                            last_id = sse.id or None
                        if not sse.data:
                            continue
                        delay = base_delay
                        try:
                            event = decoder.decode(sse.data)
                        except (msgspec.DecodeError, RecursionError) as exc:
                            _LOGGER.warning("skipping an invalid event on %s: %s", path, exc)
                            continue
                        yield event
            except FusionConnectionError as exc:
                if not connected:
                    raise
                # A stream that was up and dropped is not a failed reconnection.
                failures += 0 if streaming else 1
                if max_retries is not None and failures > max_retries:
                    raise
                _LOGGER.info("event stream %s dropped (%s), reconnecting", path, exc)
            except FusionAPIError as exc:
                if not connected or exc.status not in _RETRY_STATUSES:
                    raise
                failures += 1
                if max_retries is not None and failures > max_retries:
                    raise
                _LOGGER.info("event stream %s answered %s, retrying", path, exc.status)
            # Jitter spreads the reconnections of many clients after a restart.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(max(delay, base_delay) * 2, self.max_delay)
