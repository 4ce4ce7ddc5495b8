"""Client configuration: where the server is, how to trust it, how long to wait."""

from __future__ import annotations

import msgspec
from yarl import URL

from fusion.concept import Concept, ConceptError
from fusion.helper.config import ConfigError, TLSConfig, tls_config

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
    clients). ``ssl`` is a :class:`~fusion.helper.config.TLSConfig`, the TLS
    shape of server configurations too (``{"ca_file": ...}``, ``ca_path``,
    ``ca_data``, ``fingerprint``, ``cert_file``/``key_file`` for a client
    certificate, ``verify``); ``True`` (system CAs), ``False`` (no checks) and
    a hex SHA-256 fingerprint string (pin) are short forms, and every form is
    a TLSConfig once the config is built. ``cookie_jar`` is a file where the session cookie is kept
    between runs (read on open, written on close, mode 0600).
    """

    api_url: str
    api_key: str | None = None
    ssl: TLSConfig | bool | str = msgspec.field(default_factory=TLSConfig)
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
        # Checked here so a bad fingerprint fails when the config is read (the
        # CA files are read by FusionClient).
        try:
            self.ssl = tls_config(self.ssl, "ssl")
        except ConfigError as exc:
            raise ConceptError(str(exc)) from None
