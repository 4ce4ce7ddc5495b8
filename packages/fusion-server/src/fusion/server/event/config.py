"""Configuration of the event API (server-sent events and webhooks)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from fusion.helper.config import ConfigError, TLSConfig, tls_config
from fusion.server.event.webhook_url import url_under_prefix

__all__ = ["FusionEventConfig"]


class FusionEventConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a service writes under ``event:`` in its configuration."""

    source: str = "fusion"
    """The ``source`` of the events this service emits (its name)."""
    api_key: str | None = None
    """Sent as ``X-Fusion-Notifier-Token`` on every webhook POST."""
    webhook: str | None = None
    """The service's global webhook: receives every case event."""
    webhook_prefixes: list[str] = msgspec.field(default_factory=list)
    """Case webhooks are accepted only under these URL prefixes (none: no case webhooks)."""
    webhook_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    webhook_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    """Retries after a failed POST (connection error, timeout, 5xx)."""
    webhook_backoff: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    """Seconds before the first retry, doubled at each one."""
    webhook_ssl: TLSConfig | bool | str = msgspec.field(default_factory=TLSConfig)
    """TLS of webhook POSTs, a :class:`~fusion.helper.config.TLSConfig` (``{verify,
    ca_file, ca_path, ca_data, fingerprint, cert_file, key_file, key_password}``);
    ``true``, ``false`` and a SHA-256 fingerprint string are short forms. Always a
    TLSConfig once decoded."""
    history: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 256
    """Events kept per case for clients resuming with ``Last-Event-ID``."""
    history_ttl: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    """Seconds a case's history lives after its last event."""
    keepalive: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    """Seconds between ``: keepalive`` comments on an idle stream."""
    queue_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1024
    """Events buffered per subscriber; a subscriber that falls further behind is dropped."""
    queue_bytes: Annotated[int, msgspec.Meta(ge=1)] = 4 * 1024 * 1024
    """Bytes of events buffered per subscriber (one event is always let through);
    a subscriber that falls further behind is dropped and its buffer freed."""
    send_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """Seconds one write to a stream may stay blocked (a client that does not
    read) before its connection is closed."""
    max_streams: Annotated[int, msgspec.Meta(ge=1)] = 4096
    """Open streams per server process; past it a new one is answered 429."""
    max_streams_per_identity: Annotated[int, msgspec.Meta(ge=1)] = 100
    """Open streams of one username per server process; past it 429."""
    session_check_interval: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """Seconds between checks that the session behind each open stream still
    exists (a stream whose session ended stops; a logout stops it at once)."""
    max_watchers: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    """Most distinct usernames listed as watching one case."""
    events_channel: str | None = "events"
    """Every event is also published here, for synchronizers (None: not published)."""
    setup_concurrency: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 16
    """Streams being set up (history and watcher reads) at the same time."""
    shutdown_timeout: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    """Seconds shutdown waits for open streams to end."""

    def webhook_allowed(self, url: str) -> bool:
        """True when ``url`` is under one of :attr:`webhook_prefixes` (normalised:
        see :func:`~fusion.server.event.webhook_url.url_under_prefix`)."""
        return any(url_under_prefix(url, prefix) for prefix in self.webhook_prefixes)

    def __post_init__(self) -> None:
        # Checked when the file is read, so a bad CA path is a configuration error.
        try:
            self.webhook_ssl = tls_config(self.webhook_ssl, "webhook_ssl")
            self.webhook_ssl.aiohttp_ssl("webhook_ssl")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        for index, prefix in enumerate(self.webhook_prefixes):
            if not prefix.startswith(("http://", "https://")) or "/" not in prefix.split("://")[1]:
                raise ValueError(
                    f"webhook_prefixes[{index}]: {prefix!r} must be an http(s) URL prefix "
                    "ending its host part with '/' (https://hooks.example.org/)"
                )
