"""Client configuration: where the server is, how to trust it, how long to wait."""

from __future__ import annotations

import msgspec
from yarl import URL

from fusion.concept import Concept, ConceptError
from fusion.helper.config import ConfigError, load_ssl_config

__all__ = [
    "FusionClientConfig",
    "FusionClientProxyConfig",
    "FusionClientTimeoutConfig",
]


class FusionClientProxyConfig(Concept, kw_only=True, forbid_unknown_fields=True):
    """An HTTP proxy, with optional basic credentials and extra headers."""

    url: str
    username: str | None = None
    password: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class FusionClientTimeoutConfig(Concept, kw_only=True, forbid_unknown_fields=True):
    """Timeouts in seconds (``None``: no limit).

    ``total`` bounds a whole API call; downloads and event streams ignore it
    (they last as long as the data flows) and rely on ``sock_read``.
    """

    total: float | None = 300.0
    connect: float | None = 10.0
    sock_read: float | None = 60.0


class FusionClientConfig(Concept, kw_only=True, forbid_unknown_fields=True):
    """Everything :class:`~fusion.client.FusionClient` needs.

    ``api_url`` is the service's base URL (``https://host:port``, optionally
    with a path prefix). ``api_key`` is sent as ``X-Fusion-API-Token`` (robot
    clients). ``ssl`` is what :func:`fusion.helper.config.load_ssl_config`
    reads, as in server configurations: ``true`` (system CAs), ``false`` (no
    checks), a hex SHA-256 certificate fingerprint to pin (colons allowed),
    or ``{"cafile": ...}`` / ``capath`` / ``cadata`` (plus ``certfile`` and
    ``keyfile`` for a client certificate). ``cookie_jar`` is a file where the session cookie is kept
    between runs (read on open, written on close, mode 0600).
    """

    api_url: str
    api_key: str | None = None
    ssl: bool | str | dict[str, str] = True
    proxy: FusionClientProxyConfig | None = None
    trust_env: bool = False
    timeout: FusionClientTimeoutConfig = msgspec.field(default_factory=FusionClientTimeoutConfig)
    cookie_jar: str | None = None

    def __post_init__(self) -> None:
        url = URL(self.api_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConceptError(
                f"invalid api_url {self.api_url!r}: expected http(s)://host[:port][/prefix]"
            )
        if isinstance(self.ssl, str):
            # Checked here so a bad fingerprint fails when the config is read.
            try:
                load_ssl_config(self.ssl)
            except ConfigError as exc:
                raise ConceptError(str(exc)) from None
