"""The ``basic`` backend: users with argon2id password hashes in the configuration."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any

import msgspec
from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from fusion.concept import AuthInfo, Identity
from fusion.server.auth.backend import (
    FusionAuthBackend,
    FusionAuthBackendConfig,
    LoginBodyError,
)

__all__ = ["BasicBackend", "BasicBackendConfig", "BasicUser", "hash_password"]

_HASHER = PasswordHasher()
_MAX_PASSWORD_LENGTH = 4096


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (what ``fusion-server hash-password`` prints)."""
    return _HASHER.hash(password)


class BasicUser(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One account: ``password_hash`` is an argon2id hash (``$argon2id$...``)."""

    username: Annotated[str, msgspec.Meta(min_length=1)]
    password_hash: Annotated[str, msgspec.Meta(pattern=r"^\$argon2id\$")]
    groups: set[str] = msgspec.field(default_factory=set)

    def __post_init__(self) -> None:
        try:
            extract_parameters(self.password_hash)
        except (InvalidHashError, ValueError):
            raise ValueError(
                f"password_hash of {self.username!r} is not a valid argon2id hash "
                "(make one with `fusion-server hash-password`)"
            ) from None


class BasicBackendConfig(FusionAuthBackendConfig, tag="basic"):
    """``type: basic``: a list of users."""

    users: list[BasicUser] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        names = [user.username for user in self.users]
        if len(set(names)) != len(names):
            raise ValueError("users: a username appears twice")

    def build(self) -> BasicBackend:
        return BasicBackend(self)


class BasicBackend(FusionAuthBackend):
    """Checks ``{"username", "password"}`` against the configured argon2id hashes."""

    type = "basic"

    def __init__(self, config: BasicBackendConfig) -> None:
        self.config = config
        self._users = {user.username: user for user in config.users}
        self._decoy_hash: str | None = None

    async def startup(self) -> None:
        # Unknown usernames are verified against a decoy hash made with the
        # configured users' parameters, so that the answer takes as long as
        # for a real user with a wrong password.
        hasher = _HASHER
        if self.config.users:
            params = extract_parameters(self.config.users[0].password_hash)
            hasher = PasswordHasher.from_parameters(params)
        self._decoy_hash = await asyncio.to_thread(hasher.hash, secrets.token_urlsafe(16))

    async def login(self, data: dict[str, Any]) -> Identity | None:
        username = data.get("username")
        password = data.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise LoginBodyError('login body must be {"data": {"username": str, "password": str}}')
        if not username or len(password) > _MAX_PASSWORD_LENGTH:
            return None
        user = self._users.get(username)
        if user is not None:
            encoded = user.password_hash
        elif self._decoy_hash is not None:
            encoded = self._decoy_hash
        else:
            return None
        # argon2 takes tens of milliseconds of CPU: never on the event loop.
        verified = await asyncio.to_thread(_verify, encoded, password)
        if user is None or not verified:
            return None
        return Identity(username=user.username, groups=frozenset(user.groups))

    def info(self) -> AuthInfo:
        return AuthInfo(type=self.type, parameters={})


def _verify(encoded: str, password: str) -> bool:
    try:
        return _HASHER.verify(encoded, password)
    except (VerificationError, InvalidHashError, ValueError):
        return False
