"""The cookie jar of one service: one session across the URLs of its replicas."""

from __future__ import annotations

from collections.abc import Sequence
from http.cookies import BaseCookie, SimpleCookie
from typing import Any

import aiohttp
from yarl import URL

__all__ = ["FusionCookieJar"]


def _origin(url: URL) -> tuple[str, int | None] | None:
    host = url.host
    return None if host is None else (host.lower(), url.port)


class FusionCookieJar(aiohttp.CookieJar):
    """The cookies of one service, shared by the clients of its replicas.

    Every :class:`~fusion.client.FusionClient` using the jar adds its base
    URL (:meth:`add_service_url`); those hosts and ports are the service.
    A cookie one of them sets (the session cookie at login) is sent to all of
    them, so a session opened through ``https://a:8443`` is used through
    ``https://b:8443`` or ``http://127.0.0.1:8001`` too (browsers scope cookies by
    host, which would keep it to the replica that set it). The usual rules
    still hold: path, expiry, and ``Secure`` cookies only over https.

    Nothing is kept from, or sent to, any other host or port: a download URL
    or a redirect elsewhere gets no session. Cookies of IP-address hosts are
    kept (services are often reached by IP).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("unsafe", True)
        super().__init__(**kwargs)
        self._service: list[tuple[str, int | None]] = []

    def add_service_url(self, url: URL | str) -> None:
        """Count the host and port of ``url`` as one of the service's replicas."""
        origin = _origin(URL(url))
        if origin is None:
            raise ValueError(f"not an absolute URL: {url}")
        if origin not in self._service:
            self._service.append(origin)

    def is_service_url(self, url: URL) -> bool:
        """Whether ``url`` is on one of the service's hosts and ports."""
        origin = _origin(url)
        return origin is not None and origin in self._service

    def update_cookies(self, cookies: Any, response_url: URL = URL()) -> None:  # noqa: B008
        if self.is_service_url(response_url):
            super().update_cookies(cookies, response_url)

    def update_cookies_from_headers(self, headers: Sequence[str], response_url: URL) -> None:
        # aiohttp >= 3.12 stores Set-Cookie headers through this one.
        if self.is_service_url(response_url):
            super().update_cookies_from_headers(headers, response_url)

    def filter_cookies(self, request_url: URL = URL()) -> BaseCookie[str]:  # noqa: B008
        own = _origin(request_url)
        if own is None or own not in self._service:
            return SimpleCookie()
        merged: SimpleCookie = SimpleCookie()
        # The other replicas' cookies as if this request went to them (same
        # scheme and path), then the replica's own, which win on a name clash.
        for host, port in [*(o for o in self._service if o != own), own]:
            replica_url = request_url.with_host(host).with_port(port)
            for name, morsel in super().filter_cookies(replica_url).items():
                merged[name] = morsel
        return merged
