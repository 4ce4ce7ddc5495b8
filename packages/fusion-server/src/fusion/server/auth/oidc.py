"""OpenID Connect authentication backend (pyjwt against the provider's JWKS)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from fusion.concept import AuthInfo, Identity
from fusion.server.auth.backend import FusionAuthBackend, FusionAuthBackendConfig

__all__ = ["OIDCBackend", "OIDCBackendConfig"]


class OIDCBackendConfig(FusionAuthBackendConfig, tag="oidc", kw_only=True):
    """``type: oidc``: authorization-code login and Bearer tokens."""

    issuer: str
    """The provider's issuer URL (``iss`` of its tokens)."""
    client_id: str
    client_secret: str | None = None
    redirect_uri: str
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "profile", "email"])
    discovery_url: str | None = None
    """Defaults to ``<issuer>/.well-known/openid-configuration``."""
    client_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    """How the client authenticates at the token endpoint."""
    identity_source: Literal["id_token", "access_token"] = "id_token"
    """Which token of the code exchange gives the identity."""
    audience: list[str] = msgspec.field(default_factory=list)
    """Accepted ``aud`` values (the client id when empty)."""
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    """Asymmetric algorithms only: ``none`` and HS* are refused."""
    leeway: float = 30.0
    """Clock skew tolerated on exp, nbf and iat (seconds)."""
    required_claims: list[str] = msgspec.field(default_factory=lambda: ["exp", "iat", "sub"])
    username_claim: str = "preferred_username"
    """Claim giving the username; dotted paths reach nested claims."""
    groups_claim: str | None = "groups"
    """Claim giving the groups (a list or a string), e.g. ``realm_access.roles``."""
    allowed_groups: list[str] = msgspec.field(default_factory=list)
    """When not empty, only members of one of these groups may log in."""
    timeout: float = 10.0
    """HTTP timeout towards the provider (seconds)."""
    ca_file: str | None = None
    """PEM CA bundle to verify the provider (system CAs otherwise)."""
    tls_verify: bool = True
    jwks_cache_ttl: float = 3600.0
    """Keys are refetched after this long even without an unknown ``kid``."""
    jwks_min_refetch_interval: float = 10.0
    """An unknown ``kid`` refetches the JWKS at most this often (seconds)."""
    bearer_cache_size: int = 1024
    bearer_cache_ttl: float = 60.0
    """Validated Bearer tokens are remembered this long (never past their exp)."""

    def build(self) -> OIDCBackend:
        return OIDCBackend(self)


class OIDCBackend(FusionAuthBackend):
    """Validates the provider's tokens; logs in with the authorization code."""

    type = "oidc"

    def __init__(self, config: OIDCBackendConfig) -> None:
        self.config = config

    async def login(self, data: dict[str, Any]) -> Identity | None:
        raise NotImplementedError

    def info(self) -> AuthInfo:
        return AuthInfo(type=self.type, parameters={})
