"""Configuration of the auth API: backend, session cookie, API keys, federation, throttling."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

import msgspec

from fusion.server.auth.backend import FusionAuthBackendConfig

__all__ = [
    "APIKeyConfig",
    "FederationConfig",
    "FusionAuthAPIConfig",
    "SessionConfig",
    "ThrottleConfig",
    "api_key_digest",
]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MIN_KEY_LENGTH = 16

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


def api_key_digest(key: str) -> str:
    """SHA-256 hex digest of an API key: what the server keeps and compares."""
    return hashlib.sha256(key.encode()).hexdigest()


class SessionConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The session cookie and the server-side session lifetime."""

    cookie_name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-]+$")] = "FUSION_SESSION"
    domain: str | None = None
    path: str = "/"
    # Cookie Max-Age in seconds; null makes a browser-session cookie.
    max_age: PositiveInt | None = None
    secure: bool = False
    samesite: Literal["Strict", "Lax", "None"] | None = "Lax"
    httponly: bool = True
    # Server-side lifetime of a session (seconds), whatever the cookie says.
    ttl: PositiveFloat = 8 * 3600.0


def _digest_of(key: str | None, key_sha256: str | None, where: str) -> str:
    if (key is None) == (key_sha256 is None):
        raise ValueError(f"{where}: give exactly one of `key` or `key_sha256`")
    if key is not None:
        if len(key) < _MIN_KEY_LENGTH:
            raise ValueError(f"{where}: `key` must be at least {_MIN_KEY_LENGTH} characters")
        return api_key_digest(key)
    assert key_sha256 is not None
    digest = key_sha256.lower()
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"{where}: `key_sha256` must be 64 hexadecimal characters")
    return digest


class APIKeyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    """A robot client: its key (plain, usually an env reference, or its SHA-256) and who it is."""

    username: Annotated[str, msgspec.Meta(min_length=1)]
    groups: set[str] = msgspec.field(default_factory=set)
    key: str | None = None
    key_sha256: str | None = None

    def __post_init__(self) -> None:
        self.__dict__["digest"] = _digest_of(self.key, self.key_sha256, "api key")

    @property
    def digest(self) -> str:
        digest: str = self.__dict__["digest"]
        return digest


class FederationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    """The federation key: the hub that may do everything, including attach."""

    username: Annotated[str, msgspec.Meta(min_length=1)] = "fusion-federation"
    groups: set[str] = msgspec.field(default_factory=set)
    key: str | None = None
    key_sha256: str | None = None

    def __post_init__(self) -> None:
        self.__dict__["digest"] = _digest_of(self.key, self.key_sha256, "federation key")

    @property
    def digest(self) -> str:
        digest: str = self.__dict__["digest"]
        return digest


class ThrottleConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Failed logins allowed per username and per client address within ``window`` seconds."""

    enabled: bool = True
    window: PositiveFloat = 300.0
    max_failures_per_username: PositiveInt = 5
    max_failures_per_ip: PositiveInt = 20


class FusionAuthAPIConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    """The ``auth`` section.

    ``backend`` is a mapping with a ``type`` (``basic``, ``ldap``, ``oidc``, or
    a service's own backend type) decoded into that backend's config Struct.
    """

    backend: dict[str, Any] | None = None
    session: SessionConfig = msgspec.field(default_factory=SessionConfig)
    api_keys: list[APIKeyConfig] = msgspec.field(default_factory=list)
    federation: FederationConfig | None = None
    # Usernames or groups allowed to delete cases (they also need change access).
    can_delete: set[str] = msgspec.field(default_factory=set)
    throttle: ThrottleConfig = msgspec.field(default_factory=ThrottleConfig)

    def __post_init__(self) -> None:
        self.__dict__["backend_config"] = _decode_backend(self.backend)
        digests = [api_key.digest for api_key in self.api_keys]
        if self.federation is not None:
            digests.append(self.federation.digest)
        if len(set(digests)) != len(digests):
            raise ValueError("two API keys (or an API key and the federation key) are the same")

    @property
    def backend_config(self) -> FusionAuthBackendConfig | None:
        """The decoded backend configuration (None: no login backend, 501 on login)."""
        config: FusionAuthBackendConfig | None = self.__dict__["backend_config"]
        return config


def _decode_backend(raw: dict[str, Any] | None) -> FusionAuthBackendConfig | None:
    if raw is None:
        return None
    type_ = raw.get("type")
    if not isinstance(type_, str):
        raise ValueError("backend: missing `type` (basic, ldap, oidc, ...)")
    config_type = FusionAuthBackendConfig.for_type(type_)
    if config_type is None:
        raise ValueError(f"backend.type: unknown backend type {type_!r}")
    try:
        return msgspec.convert(raw, config_type, strict=False)
    except msgspec.ValidationError as exc:
        # "<reason> - at `$.users[0]`" -> "backend.users[0]: <reason>"
        text = str(exc)
        match = re.search(r"\s*-\s*at\s*`\$([^`]*)`$", text)
        if match:
            reason = text[: match.start()]
            key = "backend" + match.group(1)
            unknown = re.match(r"Object contains unknown field `([^`]*)`", reason)
            if unknown:
                raise ValueError(f"unknown key {key + '.' + unknown.group(1)!r}") from None
            raise ValueError(f"{key}: {reason}") from None
        unknown = re.match(r"Object contains unknown field `([^`]*)`", text)
        if unknown:
            raise ValueError(f"unknown key 'backend.{unknown.group(1)}'") from None
        raise ValueError(f"backend: {text}") from None
