"""``auth.backend`` is a msgspec tagged union: one error formatter, and services add types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fusion_testing.fixtures_server import ServerFactory, call, server_config_dict, write_config

from fusion.concept import AuthInfo, Identity
from fusion.server.auth.backend import FusionAuthBackend, FusionAuthBackendConfig
from fusion.server.auth.basic import BasicBackendConfig
from fusion.server.auth.config import AuthBackendConfig, FusionAuthAPIConfig
from fusion.server.auth.ldap import LDAPBackendConfig
from fusion.server.auth.oidc import KeycloakBackendConfig, OIDCBackendConfig
from fusion.server.config import ConfigError, FusionServerConfig, load_config


class TokenBackendConfig(FusionAuthBackendConfig, tag="token", kw_only=True):
    """A service's own backend: one shared token logs in as ``username``."""

    token: str
    username: str = "token-user"

    def build(self) -> TokenBackend:
        return TokenBackend(self)


class TokenBackend(FusionAuthBackend):
    type = "token"

    def __init__(self, config: TokenBackendConfig) -> None:
        self.config = config

    async def login(self, data: dict[str, Any]) -> Identity | None:
        if data.get("token") != self.config.token:
            return None
        return Identity(username=self.config.username, groups=frozenset({"tokens"}))

    def login_username(self, data: dict[str, Any]) -> str | None:
        return None

    def info(self) -> AuthInfo:
        return AuthInfo(type=self.type, parameters={})


class TokenAuthConfig(FusionAuthAPIConfig, kw_only=True):
    backend: AuthBackendConfig | TokenBackendConfig | None = None


class TokenServerConfig(FusionServerConfig, kw_only=True):
    auth: TokenAuthConfig | None = None


def _config_file(tmp_path: Path, backend: dict[str, Any]) -> Path:
    data = server_config_dict(tmp_path)
    data["auth"]["backend"] = backend
    return write_config(tmp_path / "fusion.yml", data)


async def test_a_service_backend_type_decodes_and_logs_in_over_http(
    tmp_path: Path, fusion_server: ServerFactory
) -> None:
    path = _config_file(tmp_path, {"type": "token", "token": "open-sesame-0123"})
    config = load_config(path, TokenServerConfig)
    assert config.auth is not None
    assert config.auth.backend == TokenBackendConfig(token="open-sesame-0123")
    # The built-in types still decode through the widened union.
    basic = load_config(_config_file(tmp_path, {"type": "basic"}), TokenServerConfig)
    assert basic.auth is not None
    assert isinstance(basic.auth.backend, BasicBackendConfig)
    running = await fusion_server(config)
    async with aiohttp.ClientSession(running.url) as session:
        status, body = await call(
            session, "POST", "/api/auth/login", json={"data": {"token": "open-sesame-0123"}}
        )
        assert (status, body["data"]["username"]) == (200, "token-user")
        status, body = await call(
            session, "POST", "/api/auth/login", json={"data": {"token": "wrong"}}
        )
        assert status == 400
        status, body = await call(session, "GET", "/api/auth/config")
        assert (status, body["data"]["type"]) == (200, "token")


@pytest.mark.parametrize(
    ("config_type", "backend", "message"),
    [
        (
            FusionServerConfig,
            {"type": "token", "token": "x"},
            "auth.backend.type: unknown backend type 'token' (basic, ldap, oidc, keycloak)",
        ),
        (
            TokenServerConfig,
            {"type": "kerberos"},
            "auth.backend.type: unknown backend type 'kerberos' "
            "(basic, ldap, oidc, keycloak, token)",
        ),
        (
            TokenServerConfig,
            {"type": "token", "tokn": "x"},
            "unknown key 'auth.backend.tokn' (did you mean 'token'?)",
        ),
        (
            TokenServerConfig,
            {"type": "token"},
            "auth.backend: Object missing required field `token`",
        ),
        (
            FusionServerConfig,
            {"type": "oidc", "issuer": "ftp://x", "client_id": "c", "redirect_uri": "r"},
            "auth.backend: issuer must be an http(s) URL",
        ),
        (
            FusionServerConfig,
            {"type": "oidc", "client_id": "c", "redirect_uri": "r", "tls": {"keyfile": "/k"}},
            "unknown key 'auth.backend.tls.keyfile' (did you mean 'key_file'?)",
        ),
    ],
)
def test_backend_errors_come_from_the_one_formatter(
    tmp_path: Path, config_type: type[FusionServerConfig], backend: dict[str, Any], message: str
) -> None:
    path = _config_file(tmp_path, backend)
    with pytest.raises(ConfigError) as raised:
        load_config(path, config_type)
    assert str(raised.value) == f"{path}: {message}"


def test_the_union_is_the_four_backend_structs() -> None:
    assert set(AuthBackendConfig.__args__) == {
        BasicBackendConfig,
        LDAPBackendConfig,
        OIDCBackendConfig,
        KeycloakBackendConfig,
    }


def test_import_fusion_server_stays_light() -> None:
    """Building the union imports no backend: ``import fusion.server`` loads neither
    fusion.server.auth, ldap3 nor pyjwt; the config module loads no ldap3."""
    code = (
        "import sys, fusion.server;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ldap3', 'jwt')"
        " or m.startswith('fusion.server.auth')));"
        "import fusion.server.config;"
        "print('ldap3' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "False"
