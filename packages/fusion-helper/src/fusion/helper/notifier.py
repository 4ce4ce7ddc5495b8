"""Case events to live subscribers (pub/sub) and, best effort, to webhooks.

::

    notifier = FusionNotifier(pubsub, token=event_api_key, global_webhook=url, history=100)
    event_id = await notifier.notify(Event(source="svc", category="update_case", case=case),
                                     case.webhooks)
    ...
    await notifier.close()

``notify`` publishes the Event JSON on the case's channel (:func:`case_channel`)
and returns its history id; webhook POSTs run in background tasks with a
timeout and bounded retries, so a slow or dead receiver never blocks the
caller, and their failures are logged, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from ssl import SSLContext
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import aiohttp

from fusion.concept import Event
from fusion.helper.pubsub import FusionPubSub

__all__ = ["DELIVERY_OUTCOMES", "NOTIFIER_TOKEN_HEADER", "FusionNotifier", "case_channel"]

_LOGGER = logging.getLogger(__name__)

NOTIFIER_TOKEN_HEADER = "X-Fusion-Notifier-Token"  # noqa: S105 - a header name

DELIVERY_OUTCOMES = ("delivered", "refused", "failed", "tls_failed", "skipped")
"""How a webhook delivery ends: accepted (2xx); refused (a 3xx or 4xx answer);
failed (no 2xx after every retry, or an unexpected error); tls_failed (the
receiver's certificate); skipped (not an http(s) URL, or malformed)."""


def case_channel(case_guid: UUID | str) -> str:
    """The pub/sub channel of a case's events: ``events:case:<guid>``."""
    return f"events:case:{str(case_guid).lower()}"


class _PermanentFailure(Exception):
    """A webhook answer that retrying will not change (4xx, redirects)."""


class _RetryableFailure(Exception):
    """A webhook answer worth retrying (5xx)."""


class FusionNotifier:
    """Publishes case events and delivers them to webhooks.

    ``ssl`` is passed to aiohttp for webhook requests: True (verify), False
    (do not verify), an :class:`ssl.SSLContext`, or an
    :class:`aiohttp.Fingerprint` (pin the receiver's certificate).
    Retries (at most ``retries`` after the first attempt, waiting ``backoff``,
    then twice as long each time) happen on connection errors, timeouts and
    5xx answers; a 4xx answer is final.
    """

    def __init__(
        self,
        pubsub: FusionPubSub,
        *,
        token: str,
        ssl: bool | SSLContext | aiohttp.Fingerprint = True,
        global_webhook: str | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        history: int = 0,
        history_ttl: float | None = None,
        on_delivery: Callable[[str], None] | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, not {timeout}")
        self.pubsub = pubsub
        self.global_webhook = global_webhook or None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.history = history
        self.history_ttl = history_ttl
        self._token = token
        self._ssl = ssl
        self._session: aiohttp.ClientSession | None = None
        self._deliveries: set[asyncio.Task[bool]] = set()
        self._closed = False
        self.abandoned = 0
        """Deliveries the last :meth:`close` cancelled after its grace (for the stop log)."""
        self.on_delivery = on_delivery
        """Called with each finished delivery's outcome, one of :data:`DELIVERY_OUTCOMES`
        (metrics count them); it must not raise nor block."""

    # -- publishing -------------------------------------------------------------
    async def notify(self, event: Event[Any], webhooks: Sequence[str] = ()) -> str | None:
        """Publish ``event`` on its case's channel and start its webhook deliveries.

        Returns the history id (None when history is off). Raises
        :class:`~fusion.helper.store.StoreUnavailableError` when the store
        cannot be reached; webhooks are attempted anyway.
        """
        if self._closed:
            raise RuntimeError("FusionNotifier is closed")
        body = event.to_json()
        for url in self._webhook_urls(webhooks):
            self._start_delivery(url, body)
        return await self.pubsub.publish(
            case_channel(event.case.guid),
            body,
            history=self.history,
            history_ttl=self.history_ttl,
        )

    def _webhook_urls(self, webhooks: Sequence[str]) -> list[str]:
        urls = [self.global_webhook] if self.global_webhook else []
        urls.extend(webhooks)
        return list(dict.fromkeys(url for url in urls if url))

    @property
    def pending(self) -> int:
        """Webhook deliveries still running."""
        return len(self._deliveries)

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the deliveries started so far are done (at most ``timeout`` seconds)."""
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=timeout)

    async def close(self, grace: float = 1.0) -> None:
        """Give pending deliveries ``grace`` seconds, cancel the rest, close the session."""
        self._closed = True
        await self.flush(grace)
        deliveries = list(self._deliveries)
        self.abandoned = len(deliveries)
        for task in deliveries:
            task.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- webhook delivery ---------------------------------------------------------
    def _start_delivery(self, url: str, body: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(url, body))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={NOTIFIER_TOKEN_HEADER: self._token},
            )
        return self._session

    async def _deliver(self, url: str, body: bytes) -> bool:
        """POST ``body`` to ``url`` with retries; True when it was accepted."""
        outcome = await self._outcome(url, body)
        if self.on_delivery is not None:
            self.on_delivery(outcome)
        return outcome == "delivered"

    async def _outcome(self, url: str, body: bytes) -> str:
        where = _redact(url)
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme not in ("http", "https"):
            _LOGGER.warning("webhook %s skipped: not an http(s) URL", where)
            return "skipped"
        try:
            return await self._deliver_with_retries(url, where, body)
        except Exception:
            # A background task: nobody else would see this.
            _LOGGER.exception("webhook %s delivery failed", where)
            return "failed"

    async def _deliver_with_retries(self, url: str, where: str, body: bytes) -> str:
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                await self._post(url, body)
            except _PermanentFailure as exc:
                _LOGGER.warning("webhook %s refused the event: %s", where, exc)
                return "refused"
            except (
                aiohttp.ClientConnectorCertificateError,
                aiohttp.ServerFingerprintMismatch,
            ) as exc:
                # The receiver's certificate will not change between attempts.
                reason = (str(exc) or type(exc).__name__).replace(url, where)
                _LOGGER.warning("webhook %s refused: TLS verification failed: %s", where, reason)
                return "tls_failed"
            except (aiohttp.InvalidURL, ValueError):
                _LOGGER.warning("webhook %s skipped: malformed URL", where)
                return "skipped"
            except (_RetryableFailure, aiohttp.ClientError, TimeoutError, OSError) as exc:
                # Messages of aiohttp errors may quote the URL, query secrets included.
                reason = (str(exc) or type(exc).__name__).replace(url, where)
                if isinstance(exc, TimeoutError):
                    reason = f"no answer within {self.timeout} s"
                if attempt == attempts:
                    _LOGGER.warning(
                        "webhook %s failed after %d attempts: %s", where, attempts, reason
                    )
                    return "failed"
                _LOGGER.info("webhook %s attempt %d failed: %s", where, attempt, reason)
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            else:
                return "delivered"
        return "failed"  # pragma: no cover - the loop always returns

    async def _post(self, url: str, body: bytes) -> None:
        async with self._client().post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            ssl=self._ssl,
            allow_redirects=False,
        ) as response:
            # Read the (small) answer so the connection can be reused.
            await response.read()
            if response.status >= 500:
                raise _RetryableFailure(f"HTTP {response.status}")
            if response.status >= 300:
                raise _PermanentFailure(f"HTTP {response.status}")


def _redact(url: str) -> str:
    """``url`` without credentials or query (which may hold secrets), for logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return repr(url[:64])
    if not parts.scheme or not host:
        return repr(url[:64])
    return f"{parts.scheme}://{host}{port}{parts.path}"
