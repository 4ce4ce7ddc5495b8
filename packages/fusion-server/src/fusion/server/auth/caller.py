"""Who is calling, and how they proved it: the facts of one request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fusion.concept import Identity

__all__ = ["Caller", "CallerSource"]

CallerSource = Literal["key", "session", "bearer", "service"]


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of a request.

    ``identity`` is who (shared, frozen); the rest is how the request proved
    it, which the server needs and the wire never carries: ``source`` (an API
    key, a session cookie, a bearer token, or ``service`` for a caller a
    service's own authorizer vouches for), the ``session_id`` behind a
    session, whether this is the ``federation`` key, and when a bearer token
    ``expires`` (epoch seconds).
    """

    identity: Identity
    source: CallerSource
    session_id: str | None = None
    federation: bool = False
    expires: float | None = None

    @property
    def username(self) -> str:
        return self.identity.username
