"""LDAP over TLS configured with the shared TLSConfig shape (``tls:``), against a real slapd."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fusion_testing.slapd import SlapdServer
from fusion_testing.tls import make_tls_files

from fusion.helper.config import TLSConfig
from fusion.server.auth.backend import BackendUnavailableError
from fusion.server.auth.ldap import LDAPBackend, LDAPBackendConfig
from fusion.server.config import ConfigError, FusionServerConfig, decode_config


def ldap_config(server: SlapdServer, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "type": "ldap",
        "url": server.ldaps_url,
        "bind_dn": server.service_dn,
        "bind_password": server.service_password,
        "user_base": server.people_base,
        "user_filter": "(&(objectClass=inetOrgPerson)(uid={username}))",
        "connect_timeout": 2.0,
        "receive_timeout": 2.0,
    }
    fields.update(overrides)
    return fields


def decoded(server: SlapdServer, **overrides: Any) -> LDAPBackendConfig:
    config = decode_config(
        {"auth": {"backend": ldap_config(server, **overrides)}}, FusionServerConfig
    )
    assert config.auth is not None
    assert isinstance(config.auth.backend, LDAPBackendConfig)
    return config.auth.backend


async def logs_in(backend: LDAPBackend) -> str | None:
    identity = await backend.login({"username": "alice", "password": "alice-secret"})
    return None if identity is None else identity.username


@pytest.mark.parametrize("start_tls", [False, True])
async def test_tls_ca_file_and_ca_data_trust_the_directory(
    slapd_server: SlapdServer,
    ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend],
    start_tls: bool,
) -> None:
    assert slapd_server.ca_file is not None
    url = {"url": slapd_server.url, "start_tls": True} if start_tls else {}
    by_file = decoded(slapd_server, tls={"ca_file": str(slapd_server.ca_file)}, **url)
    assert by_file.tls == TLSConfig(ca_file=str(slapd_server.ca_file))
    assert await logs_in(ldap_backends(by_file)) == "alice"
    # ca_data: the PEM inline (an environment reference in practice), new with the shape.
    by_data = decoded(slapd_server, tls={"ca_data": slapd_server.ca_file.read_text()}, **url)
    assert await logs_in(ldap_backends(by_data)) == "alice"


async def test_system_cas_refuse_the_test_ca_and_verify_false_skips_checks(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    with pytest.raises(BackendUnavailableError):
        await logs_in(ldap_backends(decoded(slapd_server)))
    lax = decoded(slapd_server, tls={"verify": False})
    assert await logs_in(ldap_backends(lax)) == "alice"


async def test_a_ca_that_did_not_sign_the_directory_is_refused(
    slapd_server: SlapdServer,
    ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend],
    tmp_path: Path,
) -> None:
    other = make_tls_files(tmp_path).ca_file
    with pytest.raises(BackendUnavailableError):
        await logs_in(ldap_backends(decoded(slapd_server, tls={"ca_file": str(other)})))


async def test_the_old_spelling_is_the_same_shape(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    old = decoded(slapd_server, ca_file=str(slapd_server.ca_file), tls_verify="required")
    assert old.tls == TLSConfig(ca_file=str(slapd_server.ca_file))
    assert (old.ca_file, old.tls_verify) == (None, None)
    assert await logs_in(ldap_backends(old)) == "alice"
    assert decoded(slapd_server, tls_verify="none").tls == TLSConfig(verify=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"tls": {"cafile": "/ca.pem"}},
            "unknown key 'auth.backend.tls.cafile' (did you mean 'ca_file'?)",
        ),
        (
            {"tls": {"fingerprint": "ab" * 32}},
            "auth.backend.tls.fingerprint: not supported by the ldap backend",
        ),
        (
            {"tls": {"ca_file": "/a.pem"}, "ca_file": "/b.pem"},
            "auth.backend: ca_file and tls_verify are the old spelling of tls: give only tls",
        ),
        (
            {"tls": {"verify": False, "ca_file": "/a.pem"}},
            "auth.backend.tls.verify: false checks nothing",
        ),
    ],
)
def test_tls_errors_name_the_key(
    slapd_server: SlapdServer, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        decoded(slapd_server, **overrides)
    assert message in str(raised.value)
