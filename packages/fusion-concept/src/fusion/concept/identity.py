"""Identities: who is calling."""

from __future__ import annotations

from typing import Any

import msgspec

from fusion.concept._concept import Concept

__all__ = ["Identities", "Identity"]


class Identity(Concept, kw_only=True, dict=True):
    """A user or robot: ``{"username", "groups"}``.

    Server-side properties (tokens, expiry, ...) go in :attr:`properties`,
    which is never serialised.
    """

    username: str
    groups: set[str] = msgspec.field(default_factory=set)

    @property
    def acs(self) -> set[str]:
        """The access control set: the username and every group."""
        return {self.username, *self.groups}

    @property
    def properties(self) -> dict[str, Any]:
        """Server-only properties, never serialised."""
        props: dict[str, Any] | None = self.__dict__.get("_properties")
        if props is None:
            props = self.__dict__["_properties"] = {}
        return props


class Identities(Concept, kw_only=True):
    """A set of identities, sent on the wire as a list sorted by username."""

    identities: list[Identity] = msgspec.field(default_factory=list)

    def to_list(self) -> list[Identity]:
        return sorted(self.identities, key=lambda identity: identity.username)

    @classmethod
    def from_list(cls, items: Any) -> Identities:
        return cls.from_dict({"identities": items})
