"""The authentication backend interface shared by basic, LDAP and OIDC."""

from __future__ import annotations

import unicodedata
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import msgspec

from fusion.concept import AuthInfo, Identity

__all__ = [
    "BackendUnavailableError",
    "BearerGrant",
    "FusionAuthBackend",
    "FusionAuthBackendConfig",
    "LoginBodyError",
    "has_control_characters",
    "normalise_username",
]


class BackendUnavailableError(Exception):
    """The directory or identity provider cannot be reached: the API answers 503."""


class BearerGrant(NamedTuple):
    """What a valid bearer token grants: who, and until when (epoch seconds, or None)."""

    identity: Identity
    expires: float | None = None


class LoginBodyError(ValueError):
    """The login body is not what the backend expects: the API answers 400 with this message."""


class FusionAuthBackendConfig(
    msgspec.Struct, kw_only=True, tag_field="type", forbid_unknown_fields=True
):
    """Base of backend configurations: a tagged Struct (``type: basic|ldap|oidc``).

    Each subclass sets ``tag="<type>"`` and builds its backend.
    """

    def build(self) -> FusionAuthBackend:
        raise NotImplementedError

    @classmethod
    def for_type(cls, type_: str) -> type[FusionAuthBackendConfig] | None:
        """The imported config subclass whose tag is ``type_`` (None when unknown)."""
        pending: list[type[FusionAuthBackendConfig]] = list(cls.__subclasses__())
        while pending:
            candidate = pending.pop()
            if candidate.__struct_config__.tag == type_:
                return candidate
            pending.extend(candidate.__subclasses__())
        return None


class FusionAuthBackend(ABC):
    """Turns login bodies (and optionally Bearer tokens) into identities.

    ``login`` returns None when the credentials are refused (wrong password,
    unknown user, not in an allowed group): the API then answers 400 and
    counts a failure. It raises :class:`LoginBodyError` for a malformed body
    and :class:`BackendUnavailableError` when the backend is unreachable.
    """

    type: ClassVar[str]

    async def startup(self) -> None:
        """Open connections, fetch discovery documents... (called once on app start)."""

    async def shutdown(self) -> None:
        """Release what startup opened."""

    async def ready(self) -> None:
        """Raise :class:`BackendUnavailableError` when logins cannot be served now
        (``GET /api/ready`` then answers 503). Cheap, called by every readiness
        probe, which bounds it with a timeout. The default (basic: users in the
        configuration) is always ready."""

    @abstractmethod
    async def login(self, data: dict[str, Any]) -> Identity | None:
        """Authenticate the ``data`` object of a login body."""

    async def authenticate_bearer(self, token: str) -> BearerGrant | None:
        """Who a valid ``Authorization: Bearer`` token names, and until when; None
        when refused or unsupported."""
        return None

    def login_username(self, data: dict[str, Any]) -> str | None:
        """Username a login body claims, used to throttle failures per username.

        Normalised (:func:`normalise_username`) so that spellings a directory
        takes for one account share one throttle.
        """
        username = data.get("username")
        return normalise_username(username) if isinstance(username, str) else None

    @abstractmethod
    def info(self) -> AuthInfo:
        """What ``GET /api/auth/config`` reports: never anything secret."""


def normalise_username(username: str) -> str:
    """One spelling for the names a directory matches as equal: NFKC (full-width
    letters), case folded, surrounding space removed and inner runs of
    whitespace collapsed (LDAP's insignificant-space handling)."""
    return " ".join(unicodedata.normalize("NFKC", username).casefold().split())


def has_control_characters(text: str) -> bool:
    """True when ``text`` holds a control, format (bidi, zero-width), surrogate,
    private-use or unassigned character: none belongs in a username."""
    return any(unicodedata.category(char)[0] == "C" for char in text)
