"""Publishing case events: the one path of the web process and of a service's workers.

An analyzer or worker process of a service runs no web application, yet its
events must reach the same places as those of the web process: every
subscriber of the case on every replica (through the shared store) and the
webhooks (posted by the process that publishes, so each gets one POST)::

    config = load_config("service.yml", ServiceConfig)
    async with CaseEventPublisher.from_config(config) as events:
        await events.notify("analysis_done", case, ext={"status": "success"})

:class:`~fusion.server.event.api.FusionEventAPI` publishes through one of these.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fusion.concept import Case, Event
from fusion.helper.config import load_ssl_config
from fusion.helper.notifier import FusionNotifier, case_channel
from fusion.helper.pubsub import FusionPubSub
from fusion.helper.store import SharedStore, StoreUnavailableError, create_store
from fusion.server.event.config import FusionEventConfig

if TYPE_CHECKING:
    from fusion.server.config import FusionServerConfig

__all__ = ["CaseEventPublisher"]

_LOGGER = logging.getLogger(__name__)


class CaseEventPublisher:
    """Publishes case events to live subscribers (every replica), webhooks and the
    synchronizers' channel, for the web process and for worker processes alike.

    Built on a :class:`~fusion.helper.pubsub.FusionPubSub` (the web process
    shares its own), or from a service's configuration alone with
    :meth:`from_config`, which then owns the store it opens. Use it as an async
    context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        config: FusionEventConfig,
        pubsub: FusionPubSub,
    ) -> None:
        """``pubsub`` stays open when the publisher closes (its owner closes it)."""
        self.config = config
        self.pubsub = pubsub
        self.notifier = FusionNotifier(
            pubsub,
            token=config.api_key or "",
            ssl=load_ssl_config(config.webhook_ssl, "event.webhook_ssl"),
            global_webhook=config.webhook,
            timeout=config.webhook_timeout,
            retries=config.webhook_retries,
            backoff=config.webhook_backoff,
            history=config.history,
            history_ttl=config.history_ttl,
        )
        self.on_publish: Callable[[Event[Any]], None] | None = None
        """Called with each case event once published (metrics count them); it
        must not raise nor block."""
        # What from_config() opened, closed with the publisher, in this order.
        self._owned: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def from_config(
        cls, config: FusionServerConfig, *, store: SharedStore | None = None
    ) -> CaseEventPublisher:
        """A publisher for a worker: the ``event`` section and the shared store
        (``shared_store.url``) of the service's configuration, no web application.

        ``store``: use this store instead of opening one (it is then not closed
        with the publisher). Raises ValueError when the configuration has no
        ``event`` section.
        """
        if config.event is None:
            raise ValueError("the configuration has no event section: events are not enabled")
        opened = None
        if store is None:
            store = opened = create_store(config.shared_store.url)
        pubsub = FusionPubSub(store)
        publisher = cls(config.event, pubsub)
        publisher._owned.append(pubsub.close)
        if opened is not None:
            publisher._owned.append(opened.close)
        return publisher

    @property
    def delivery_deadline(self) -> float:
        """Seconds a webhook delivery takes at most: every attempt timing out, every backoff."""
        config = self.config
        attempts = config.webhook_retries + 1
        # The waits between attempts: backoff, twice that, ... (webhook_retries of them).
        backoff = sum(
            config.webhook_backoff * 2.0**retry for retry in range(config.webhook_retries)
        )
        return config.webhook_timeout * attempts + backoff

    async def notify(
        self, category: str, case: Case, ext: dict[str, Any] | None = None
    ) -> str | None:
        """Send ``category`` about ``case`` to its subscribers on every replica, its
        webhooks (those under ``webhook_prefixes``), the global one and the
        synchronizers' channel.

        Returns the event's history id once published (None when history is
        off, or when the store cannot be reached: the event is then lost for
        live subscribers, logged, and the webhooks are posted all the same).
        Webhook POSTs run in the background; :meth:`close` waits for them.
        """
        event = Event(source=self.config.source, category=category, case=case, ext=ext)
        return await self.publish(event)

    async def publish(self, event: Event[Any], *, webhooks: bool = True) -> str | None:
        """Publish a ready ``event`` (see :meth:`notify`); ``webhooks=False``: to the
        case's subscribers only (presence events)."""
        if not webhooks:
            return await self.pubsub.publish(
                case_channel(event.case.guid),
                event.to_json(),
                history=self.config.history,
                history_ttl=self.config.history_ttl,
            )
        # Checked again here: a case stored before the prefixes changed keeps its URLs.
        allowed = [url for url in event.case.webhooks if self.config.webhook_allowed(url)]
        try:
            message_id = await self.notifier.notify(event, allowed)
            if self.config.events_channel:
                # Presence events (webhooks=False) would only keep synchronizers busy.
                await self.pubsub.publish(self.config.events_channel, event.to_json())
        except StoreUnavailableError as exc:
            # The change behind the event is done: losing the live event beats
            # failing the caller; the webhooks were started all the same.
            _LOGGER.warning(
                "event %s of case %s not published: %s", event.category, event.case.guid, exc
            )
            return None
        if self.on_publish is not None:
            self.on_publish(event)
        return message_id

    async def close(self, grace: float | None = None) -> None:
        """Wait for the webhook deliveries (at most ``grace`` seconds, by default
        :attr:`delivery_deadline`), cancel the rest, and close what this
        publisher opened."""
        await self.notifier.close(self.delivery_deadline if grace is None else grace)
        owned, self._owned = self._owned, []
        for close in owned:
            await close()

    async def __aenter__(self) -> CaseEventPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
