"""LDAP authentication backend (ldap3, from the ``fusion-server[ldap]`` extra)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from fusion.concept import AuthInfo, Identity
from fusion.server.auth.backend import FusionAuthBackend, FusionAuthBackendConfig

__all__ = ["LDAPBackend", "LDAPBackendConfig"]

# Matches a user in any of the three common group shapes; {dn} and {username}
# are replaced by escaped values.
DEFAULT_GROUP_FILTER = (
    "(|(&(objectClass=groupOfNames)(member={dn}))"
    "(&(objectClass=groupOfUniqueNames)(uniqueMember={dn}))"
    "(&(objectClass=posixGroup)(memberUid={username})))"
)


class LDAPBackendConfig(FusionAuthBackendConfig, tag="ldap", kw_only=True):
    """``type: ldap``: users (and their groups) from a directory."""

    url: str
    """``ldap://host:port`` or ``ldaps://host:port`` (no trailing slash)."""
    start_tls: bool = False
    """Upgrade an ``ldap://`` connection with StartTLS before any bind."""
    ca_file: str | None = None
    """PEM CA bundle to verify the directory's certificate (system CAs otherwise)."""
    tls_verify: Literal["required", "optional", "none"] = "required"
    """Certificate validation (ssl.CERT_REQUIRED by default)."""
    connect_timeout: float = 5.0
    receive_timeout: float = 10.0
    mode: Literal["search", "direct"] = "search"
    """search: a service account finds the user's DN; direct: ``user_dn_template``."""
    bind_dn: str | None = None
    """Service account for the user (and group) searches; anonymous when None."""
    bind_password: str | None = None
    user_base: str | None = None
    """Base of the user search (mode search)."""
    user_filter: str = "(uid={username})"
    """Filter of the user search; ``{username}`` is replaced by the escaped username."""
    user_scope: Literal["subtree", "level", "base"] = "subtree"
    user_dn_template: str | None = None
    """DN of the user (mode direct), e.g. ``uid={username},ou=people,dc=example,dc=org``."""
    username_attribute: str | None = None
    """Attribute giving the Identity's username (the login name when None)."""
    group_source: Literal["none", "member_of", "search"] = "member_of"
    member_of_attribute: str = "memberOf"
    group_base: str | None = None
    """Base of the group search (group_source search)."""
    group_filter: str = DEFAULT_GROUP_FILTER
    """``{dn}`` and ``{username}`` are replaced by escaped values."""
    group_scope: Literal["subtree", "level", "base"] = "subtree"
    group_name_attribute: str = "cn"
    allowed_groups: list[str] = msgspec.field(default_factory=list)
    """When not empty, only members of one of these groups may log in."""

    def build(self) -> LDAPBackend:
        return LDAPBackend(self)


class LDAPBackend(FusionAuthBackend):
    """Search-then-bind or direct bind against a directory."""

    type = "ldap"

    def __init__(self, config: LDAPBackendConfig) -> None:
        self.config = config

    async def login(self, data: dict[str, Any]) -> Identity | None:
        raise NotImplementedError

    def info(self) -> AuthInfo:
        return AuthInfo(type=self.type, parameters={})
