"""Authentication and authorization: backends, sessions, API keys, access control."""

# The backend modules are imported so that their config tags (basic, ldap,
# oidc) are known when an auth section is decoded.
from fusion.server.auth import ldap as _ldap  # noqa: F401
from fusion.server.auth import oidc as _oidc  # noqa: F401
from fusion.server.auth.access import (
    Access,
    Action,
    can_access_case,
    can_delete,
    closed_case_refusal,
)
from fusion.server.auth.api import FusionAuthAPI
from fusion.server.auth.backend import (
    BackendUnavailableError,
    BearerGrant,
    FusionAuthBackend,
    FusionAuthBackendConfig,
    LoginBodyError,
)
from fusion.server.auth.basic import BasicBackend, BasicBackendConfig, BasicUser, hash_password
from fusion.server.auth.caller import Caller, CallerSource
from fusion.server.auth.config import (
    APIKeyConfig,
    FederationConfig,
    FusionAuthAPIConfig,
    SessionConfig,
    ThrottleConfig,
    api_key_digest,
)
from fusion.server.auth.session import SessionManager

__all__ = [
    "APIKeyConfig",
    "Access",
    "Action",
    "BackendUnavailableError",
    "BasicBackend",
    "BasicBackendConfig",
    "BasicUser",
    "BearerGrant",
    "Caller",
    "CallerSource",
    "FederationConfig",
    "FusionAuthAPI",
    "FusionAuthAPIConfig",
    "FusionAuthBackend",
    "FusionAuthBackendConfig",
    "LoginBodyError",
    "SessionConfig",
    "SessionManager",
    "ThrottleConfig",
    "api_key_digest",
    "can_access_case",
    "can_delete",
    "closed_case_refusal",
    "hash_password",
]
