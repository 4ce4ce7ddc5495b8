"""Configuration of the auth API: backend, session cookie, API keys, federation, throttling."""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from fusion.server.auth.backend import FusionAuthBackendConfig
from fusion.server.auth.basic import BasicBackendConfig
from fusion.server.auth.ldap import LDAPBackendConfig
from fusion.server.auth.oidc import KeycloakBackendConfig, OIDCBackendConfig

__all__ = [
    "APIKeyConfig",
    "AuthBackendConfig",
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


# The backends every server knows. A service with a backend of its own widens
# the union in a subclass (see FusionAuthAPIConfig).
AuthBackendConfig = (
    BasicBackendConfig | LDAPBackendConfig | OIDCBackendConfig | KeycloakBackendConfig
)
if TYPE_CHECKING:
    # Typed as the base class, so a subclass may widen the union (msgspec
    # decodes with the real union below).
    _Backend = FusionAuthBackendConfig
else:
    _Backend = AuthBackendConfig


class FusionAuthAPIConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``auth`` section.

    ``backend`` is a tagged union on ``type`` (``basic``, ``ldap``, ``oidc``,
    ``keycloak``):
    msgspec decodes it into that backend's config Struct. A service with its
    own backend type subclasses this Struct and widens the union::

        class TokenBackendConfig(FusionAuthBackendConfig, tag="token"): ...

        class MyAuthConfig(FusionAuthAPIConfig):
            backend: AuthBackendConfig | TokenBackendConfig | None = None

        class MyServerConfig(FusionServerConfig):
            auth: MyAuthConfig | None = None
    """

    backend: _Backend | None = None
    session: SessionConfig = msgspec.field(default_factory=SessionConfig)
    api_keys: list[APIKeyConfig] = msgspec.field(default_factory=list)
    federation: FederationConfig | None = None
    # Usernames or groups allowed to delete cases (they also need change access).
    can_delete: set[str] = msgspec.field(default_factory=set)
    throttle: ThrottleConfig = msgspec.field(default_factory=ThrottleConfig)

    def __post_init__(self) -> None:
        digests = [api_key.digest for api_key in self.api_keys]
        if self.federation is not None:
            digests.append(self.federation.digest)
        if len(set(digests)) != len(digests):
            raise ValueError("two API keys (or an API key and the federation key) are the same")

    @property
    def backend_config(self) -> FusionAuthBackendConfig | None:
        """``backend`` (None: no login backend, 501 on login); kept for callers of
        the time it was decoded by hand."""
        return self.backend
