"""Configuration of CORS."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

__all__ = ["FusionCORSConfig"]

_ORIGIN = re.compile(r"https?://[^/?#\s@]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class FusionCORSConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``cors`` section: which other origins' pages may call the server.

    Absent (the default), no CORS header is ever sent and preflights get the
    server's usual 405: browsers then only let pages of the server's own
    origin read its answers.
    """

    allow_origins: Annotated[list[str], msgspec.Meta(min_length=1)]
    """Origins (``https://app.example.org``, ``http://localhost:3000``: scheme,
    host and port, no path), or ``["*"]`` for any (not with ``allow_credentials``)."""
    allow_methods: list[str] = msgspec.field(
        default_factory=lambda: ["GET", "POST", "PUT", "DELETE"]
    )
    """Methods a page may use (answered in ``Access-Control-Allow-Methods``)."""
    allow_headers: list[str] = msgspec.field(
        default_factory=lambda: [
            "Authorization",
            "Content-Type",
            "If-Match",
            "Last-Event-ID",
            "X-Fusion-API-Token",
            "X-Request-ID",
        ]
    )
    """Request headers a page may send (``Access-Control-Allow-Headers``)."""
    expose_headers: list[str] = msgspec.field(default_factory=lambda: ["X-Request-ID"])
    """Response headers a page may read beyond the safelisted ones."""
    allow_credentials: bool = False
    """Let pages send the session cookie (``fetch(..., {credentials: "include"})``)."""
    max_age: Annotated[int, msgspec.Meta(ge=0)] = 600
    """Seconds a browser may cache a preflight's answer."""

    def __post_init__(self) -> None:
        origins: list[str] = []
        for index, origin in enumerate(self.allow_origins):
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"allow_origins[{index}]: {origin!r} is not an origin "
                    "(scheme://host[:port], no path nor trailing slash)"
                )
            origins.append(origin.lower())
        if "*" in origins and self.allow_credentials:
            raise ValueError(
                "allow_origins: '*' with allow_credentials would let every site "
                "act as the logged-in user: list the origins"
            )
        self.allow_origins = origins
        for name in ("allow_methods", "allow_headers", "expose_headers"):
            for index, value in enumerate(getattr(self, name)):
                if not _TOKEN.fullmatch(value):
                    raise ValueError(f"{name}[{index}]: {value!r} is not a method or header name")
        self.allow_methods = [method.upper() for method in self.allow_methods]
