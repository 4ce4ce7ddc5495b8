"""The LDAP backend against a real slapd (fixtures in fusion_testing.fixtures_ldap)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fusion_testing.slapd import SUFFIX, SlapdServer
from fusion_testing.tls import make_tls_files

from fusion.helper.config import TLSConfig
from fusion.server.auth.backend import (
    BackendUnavailableError,
    FusionAuthBackendConfig,
    LoginBodyError,
)
from fusion.server.auth.ldap import LDAPBackend, LDAPBackendConfig

pytestmark = pytest.mark.ldap

SMITH = 'smith, j+r"x'


def search_config(server: SlapdServer, **overrides: Any) -> LDAPBackendConfig:
    fields: dict[str, Any] = {
        "type": "ldap",
        "url": server.url,
        "mode": "search",
        "bind_dn": server.service_dn,
        "bind_password": server.service_password,
        "user_base": server.people_base,
        "user_filter": "(&(objectClass=inetOrgPerson)(uid={username}))",
        "connect_timeout": 2.0,
        "receive_timeout": 2.0,
    }
    fields.update(overrides)
    return msgspec.convert(fields, LDAPBackendConfig)


def direct_config(server: SlapdServer, **overrides: Any) -> LDAPBackendConfig:
    fields: dict[str, Any] = {
        "type": "ldap",
        "url": server.url,
        "mode": "direct",
        "user_dn_template": f"uid={{username}},ou=people,{SUFFIX}",
        "connect_timeout": 2.0,
        "receive_timeout": 2.0,
    }
    fields.update(overrides)
    return msgspec.convert(fields, LDAPBackendConfig)


async def login(backend: LDAPBackend, username: str, password: str) -> tuple[str, set[str]] | None:
    identity = await backend.login({"username": username, "password": password})
    return None if identity is None else (identity.username, set(identity.groups))


# -- configuration --------------------------------------------------------------


def test_config_is_found_by_tag_and_decodes_from_yaml_shapes() -> None:
    config_class = FusionAuthBackendConfig.for_type("ldap")
    assert config_class is LDAPBackendConfig
    decoded = msgspec.convert(
        {
            "type": "ldap",
            "url": "ldaps://ldap.example.org:636",
            "bind_dn": "cn=reader,dc=example,dc=org",
            "bind_password": "pw",
            "user_base": "ou=people,dc=example,dc=org",
            "allowed_groups": ["cert"],
        },
        config_class,
    )
    assert isinstance(decoded, LDAPBackendConfig)
    assert decoded.tls == TLSConfig()
    assert decoded.tls_verify is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "http://x"}, "url must be"),
        ({"url": "ldap://x:389/"}, "url must be"),
        ({"url": "ldaps://x", "start_tls": True}, "start_tls"),
        ({"user_base": None}, "user_base"),
        ({"user_filter": "(uid=*)"}, "{username}"),
        ({"user_filter": "uid={username}"}, "parentheses"),
        ({"user_filter": "(uid={username}{user})"}, "placeholder"),
        ({"mode": "direct"}, "user_dn_template"),
        ({"bind_password": None}, "go together"),
        ({"bind_password": ""}, "empty"),
        ({"group_source": "search"}, "group_base"),
        ({"group_source": "none", "allowed_groups": ["a"]}, "group_source"),
        ({"connect_timeout": 0}, "positive"),
        ({"tls_verify": "sometimes"}, "tls_verify"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_bad_config_is_refused_with_a_message_naming_the_problem(
    fields: dict[str, Any], message: str
) -> None:
    base: dict[str, Any] = {
        "type": "ldap",
        "url": "ldap://127.0.0.1:389",
        "bind_dn": "cn=reader,dc=example,dc=org",
        "bind_password": "pw",
        "user_base": "ou=people,dc=example,dc=org",
    }
    base.update(fields)
    with pytest.raises(msgspec.ValidationError, match=message.replace("{", r"\{")):
        msgspec.convert(base, LDAPBackendConfig)


# -- search-then-bind -------------------------------------------------------------


async def test_search_then_bind_with_groups_from_member_of(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    backend = ldap_backends(search_config(slapd_server))
    await backend.startup()
    assert await login(backend, "alice", "alice-secret") == ("alice", {"analysts", "admins"})
    assert await login(backend, "carol", "carol-secret") == ("carol", {"responders"})
    # posixGroup membership is not in memberOf
    assert await login(backend, "bob", "bob-secret") == ("bob", {"analysts"})
    assert await login(backend, "dave", "dave-secret") == ("dave", set())


async def test_wrong_password_unknown_user_and_empty_password_are_refused(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    backend = ldap_backends(search_config(slapd_server))
    assert await login(backend, "alice", "bob-secret") is None
    assert await login(backend, "alice", "alice-secret ") is None
    assert await login(backend, "nobody", "alice-secret") is None
    assert await login(backend, "alice", "") is None
    assert await login(backend, "", "alice-secret") is None


async def test_empty_password_is_refused_before_any_bind(
    ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend],
) -> None:
    # Nothing listens on this port: a refusal (not a 503) proves no connection was tried.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = direct_config_for_url(f"ldap://127.0.0.1:{port}")
    backend = ldap_backends(config)
    assert await backend.login({"username": "alice", "password": ""}) is None
    with pytest.raises(BackendUnavailableError):
        await backend.login({"username": "alice", "password": "x"})


def direct_config_for_url(url: str) -> LDAPBackendConfig:
    return LDAPBackendConfig(
        url=url,
        mode="direct",
        user_dn_template=f"uid={{username}},ou=people,{SUFFIX}",
        connect_timeout=1.0,
        receive_timeout=1.0,
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "alice"},
        {"password": "x"},
        {"username": 1, "password": "x"},
        {"username": "alice", "password": ["x"]},
    ],
)
async def test_malformed_body_is_a_login_body_error(
    slapd_server: SlapdServer,
    ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend],
    body: dict[str, Any],
) -> None:
    backend = ldap_backends(search_config(slapd_server))
    with pytest.raises(LoginBodyError, match="username"):
        await backend.login(body)


@pytest.mark.parametrize(
    "username",
    ["*", "*)(uid=*", "alice)(|(uid=*", "a*", "*)(objectClass=*))(|(uid=*", "alice\\2a", "al*ce"],
)
async def test_filter_injection_matches_nobody(
    slapd_server: SlapdServer,
    ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend],
    username: str,
) -> None:
    backend = ldap_backends(search_config(slapd_server))
    for password in ("alice-secret", "bob-secret"):
        assert await login(backend, username, password) is None


async def test_an_ambiguous_filter_logs_nobody_in(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    # A filter matching several people must not pick one of them.
    config = search_config(slapd_server, user_filter="(|(uid={username})(objectClass=person))")
    backend = ldap_backends(config)
    assert await login(backend, "alice", "alice-secret") is None


async def test_username_attribute_gives_the_directory_spelling(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    backend = ldap_backends(search_config(slapd_server, username_attribute="uid"))
    # uid matching is case-insensitive: the identity keeps one spelling
    assert await login(backend, "ALICE", "alice-secret") == ("alice", {"analysts", "admins"})
    # Without username_attribute: the attribute user_filter matches the name on.
    plain = ldap_backends(search_config(slapd_server))
    assert await login(plain, "ALICE", "alice-secret") == ("alice", {"analysts", "admins"})


async def test_service_account_refused_is_unavailable(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    backend = ldap_backends(search_config(slapd_server, bind_password="wrong"))
    with pytest.raises(BackendUnavailableError, match="service account"):
        await backend.login({"username": "alice", "password": "alice-secret"})


# -- groups ---------------------------------------------------------------------


async def test_groups_from_a_group_search_of_all_three_shapes(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    config = search_config(slapd_server, group_source="search", group_base=slapd_server.groups_base)
    backend = ldap_backends(config)
    assert await login(backend, "alice", "alice-secret") == ("alice", {"analysts", "admins"})
    assert await login(backend, "bob", "bob-secret") == ("bob", {"analysts", "operators"})
    assert await login(backend, "carol", "carol-secret") == ("carol", {"responders"})
    assert await login(backend, SMITH, "smith-secret") == (SMITH, {"analysts"})


async def test_group_search_with_a_custom_filter_and_name_attribute(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    config = search_config(
        slapd_server,
        group_source="search",
        group_base=slapd_server.groups_base,
        group_filter="(&(objectClass=posixGroup)(memberUid={username}))",
        group_name_attribute="gidNumber",
    )
    backend = ldap_backends(config)
    assert await login(backend, "bob", "bob-secret") == ("bob", {"5000"})
    assert await login(backend, "alice", "alice-secret") == ("alice", set())


async def test_no_group_source_gives_no_groups(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    backend = ldap_backends(search_config(slapd_server, group_source="none"))
    assert await login(backend, "alice", "alice-secret") == ("alice", set())


@pytest.mark.parametrize("group_source", ["member_of", "search"])
async def test_allowed_groups_refuse_everyone_else(
    slapd_server: SlapdServer,
    ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend],
    group_source: str,
) -> None:
    config = search_config(
        slapd_server,
        group_source=group_source,
        group_base=slapd_server.groups_base,
        allowed_groups=["admins", "responders"],
    )
    backend = ldap_backends(config)
    assert await login(backend, "alice", "alice-secret") == ("alice", {"analysts", "admins"})
    assert await login(backend, "carol", "carol-secret") == ("carol", {"responders"})
    assert await login(backend, "bob", "bob-secret") is None
    assert await login(backend, "dave", "dave-secret") is None


# -- direct bind ----------------------------------------------------------------


async def test_direct_bind_reads_groups_with_the_user_connection(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    backend = ldap_backends(direct_config(slapd_server))
    assert await login(backend, "alice", "alice-secret") == ("alice", {"analysts", "admins"})
    assert await login(backend, "alice", "wrong") is None
    assert await login(backend, "nobody", "alice-secret") is None
    assert await login(backend, "dave", "") is None


async def test_direct_bind_escapes_the_dn_value(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    backend = ldap_backends(direct_config(slapd_server))
    assert await login(backend, SMITH, "smith-secret") == (SMITH, {"analysts"})
    # Without escaping this would bind as alice (the RDN would end at the comma).
    assert await login(backend, "alice,ou=people", "alice-secret") is None
    assert await login(backend, "alice+cn=alice", "alice-secret") is None


async def test_direct_bind_with_a_group_search_by_the_service_account(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    config = direct_config(
        slapd_server,
        bind_dn=slapd_server.service_dn,
        bind_password=slapd_server.service_password,
        group_source="search",
        group_base=slapd_server.groups_base,
    )
    backend = ldap_backends(config)
    assert await login(backend, "bob", "bob-secret") == ("bob", {"analysts", "operators"})


# -- TLS ------------------------------------------------------------------------


async def test_start_tls_with_the_test_ca(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    config = search_config(slapd_server, start_tls=True, ca_file=str(slapd_server.ca_file))
    backend = ldap_backends(config)
    assert await login(backend, "alice", "alice-secret") == ("alice", {"analysts", "admins"})


async def test_ldaps_with_the_test_ca(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    config = search_config(
        slapd_server, url=slapd_server.ldaps_url, ca_file=str(slapd_server.ca_file)
    )
    backend = ldap_backends(config)
    assert await login(backend, "carol", "carol-secret") == ("carol", {"responders"})
    assert await login(backend, "carol", "wrong") is None


@pytest.mark.parametrize("use_ldaps", [True, False])
async def test_tls_without_the_ca_is_refused_as_unavailable(
    slapd_server: SlapdServer,
    ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend],
    tmp_path: Path,
    use_ldaps: bool,
) -> None:
    # A CA file that did not sign the directory's certificate.
    other_ca = make_tls_files(tmp_path).ca_file
    tls: dict[str, Any] = {"url": slapd_server.ldaps_url} if use_ldaps else {"start_tls": True}
    backend = ldap_backends(search_config(slapd_server, ca_file=str(other_ca), **tls))
    with pytest.raises(BackendUnavailableError, match=r"unreachable|StartTLS"):
        await backend.login({"username": "alice", "password": "alice-secret"})
    # Validation can be turned off explicitly (test setups only).
    lax = ldap_backends(search_config(slapd_server, tls_verify="none", **tls))
    assert await login(lax, "alice", "alice-secret") == ("alice", {"analysts", "admins"})


# -- the directory going away ------------------------------------------------------


async def test_directory_stopped_mid_test_is_unavailable_then_recovers(
    slapd_factory: Callable[..., SlapdServer],
    ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend],
) -> None:
    server = slapd_factory()
    for config in (search_config(server), direct_config(server)):
        backend = ldap_backends(config)
        assert await login(backend, "alice", "alice-secret") is not None
        server.stop()
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=r"ldap://127\.0\.0\.1"):
            await backend.login({"username": "alice", "password": "alice-secret"})
        assert time.monotonic() - started < 2
        server.start()
        assert await login(backend, "alice", "alice-secret") is not None


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


async def test_a_directory_that_never_answers_times_out(
    silent_listener: int, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    config = LDAPBackendConfig(
        url=f"ldap://127.0.0.1:{silent_listener}",
        mode="direct",
        user_dn_template=f"uid={{username}},ou=people,{SUFFIX}",
        connect_timeout=0.5,
        receive_timeout=0.5,
    )
    backend = ldap_backends(config)
    started = time.monotonic()
    # The loop keeps running while the directory hangs.
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(BackendUnavailableError):
            await backend.login({"username": "alice", "password": "x"})
    finally:
        ticker.cancel()
    assert time.monotonic() - started < 3
    assert ticks >= 5


async def test_info_reports_the_type_and_nothing_secret(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    backend = ldap_backends(search_config(slapd_server))
    info = backend.info()
    assert info.type == "ldap"
    encoded = info.to_json() if hasattr(info, "to_json") else msgspec.json.encode(info)
    text = encoded.decode() if isinstance(encoded, bytes) else str(encoded)
    assert slapd_server.service_password not in text
    assert slapd_server.service_dn not in text


async def test_concurrent_logins(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    backend = ldap_backends(search_config(slapd_server))
    results = await asyncio.gather(
        *(
            login(backend, user, f"{user}-secret" if index % 3 else "wrong")
            for index, user in enumerate(["alice", "bob", "carol", "dave"] * 5)
        )
    )
    for index, result in enumerate(results):
        assert (result is None) == (index % 3 == 0)


async def test_a_base_that_does_not_exist_finds_nobody(
    slapd_server: SlapdServer, ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend]
) -> None:
    backend = ldap_backends(search_config(slapd_server, user_base=f"ou=nowhere,{SUFFIX}"))
    assert await login(backend, "alice", "alice-secret") is None
    groups_elsewhere = search_config(
        slapd_server, group_source="search", group_base=f"ou=nowhere,{SUFFIX}"
    )
    assert await login(ldap_backends(groups_elsewhere), "alice", "alice-secret") == ("alice", set())


async def test_a_missing_ca_file_is_unavailable_not_a_crash(
    slapd_server: SlapdServer,
    ldap_backends: Callable[[LDAPBackendConfig], LDAPBackend],
    tmp_path: Path,
) -> None:
    config = search_config(slapd_server, start_tls=True, ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(BackendUnavailableError, match=r"missing\.pem"):
        await ldap_backends(config).login({"username": "alice", "password": "alice-secret"})
