"""Identities: who is calling."""

from __future__ import annotations

from typing import Any

import msgspec

from fusion.concept._concept import Concept

__all__ = ["Identities", "Identity"]


class Identity(Concept, kw_only=True, frozen=True):  # type: ignore[misc]  # msgspec allows it
    """A user or robot: ``{"username", "groups"}``.

    Frozen (``groups`` a frozenset): one Identity is shared by every request of
    an API key or a cached session, and handed to service hooks, so nobody may
    change it. What the server knows of a request beyond who is calling (how it
    authenticated, its session) lives beside it, never in it.
    """

    username: str
    groups: frozenset[str] = frozenset()

    @property
    def acs(self) -> frozenset[str]:
        """The access control set: the username and every group."""
        return self.groups | {self.username}


class Identities(Concept, kw_only=True):
    """A set of identities, sent on the wire as a list sorted by username."""

    identities: list[Identity] = msgspec.field(default_factory=list)

    def to_list(self) -> list[Identity]:
        return sorted(self.identities, key=lambda identity: identity.username)

    @classmethod
    def from_list(cls, items: Any) -> Identities:
        return cls.from_dict({"identities": items})
