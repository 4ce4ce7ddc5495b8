"""LDAP logins through the real auth API over loopback sockets, against a real slapd."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fusion_testing.fixtures_server import (
    HTTPSessionFactory,
    ServerFactory,
    call,
    login,
    server_config,
)
from fusion_testing.slapd import SlapdServer

from fusion.server.auth.ldap import LDAPBackendConfig
from fusion.server.config import load_config

pytestmark = pytest.mark.ldap

# The README's example, with the test directory's values substituted.
README_EXAMPLE = """\
auth:
  backend:
    type: ldap
    url: ldap://{host_port}
    start_tls: true
    ca_file: {ca_file}
    bind_dn: cn=reader,ou=services,dc=example,dc=org
    bind_password: ${{LDAP_BIND_PASSWORD}}
    user_base: ou=people,dc=example,dc=org
    user_filter: (&(objectClass=inetOrgPerson)(uid={{username}}))
    username_attribute: uid
    group_source: search
    group_base: ou=groups,dc=example,dc=org
    allowed_groups: [analysts, responders]
"""


def ldap_backend(server: SlapdServer, **overrides: Any) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "type": "ldap",
        "url": server.url,
        "bind_dn": server.service_dn,
        "bind_password": server.service_password,
        "user_base": server.people_base,
        "connect_timeout": 1,
        "receive_timeout": 1,
    }
    backend.update(overrides)
    return backend


async def test_login_gives_a_working_session(
    slapd_server: SlapdServer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    config = server_config(tmp_path, auth={"backend": ldap_backend(slapd_server)})
    running = await fusion_server(config)
    session = http_sessions(running.url)

    status, body = await login(session, "alice", "alice-secret")
    assert status == 200, body
    assert body["data"] == {"username": "alice", "groups": ["admins", "analysts"]}
    assert "FUSION_SESSION" in {cookie.key for cookie in session.cookie_jar}

    status, body = await call(session, "GET", "/api/auth/is_logged")
    assert (status, body["data"]["username"]) == (200, "alice")
    status, body = await call(session, "POST", "/api/case", json={"name": "ldap case"})
    assert status == 200, body
    status, body = await call(session, "GET", "/api/cases")
    assert status == 200
    assert [case["name"] for case in body["data"]] == ["ldap case"]


async def test_refusals_and_bad_bodies_are_400_never_500(
    slapd_server: SlapdServer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    config = server_config(
        tmp_path,
        auth={"backend": ldap_backend(slapd_server), "throttle": {"enabled": False}},
    )
    running = await fusion_server(config)
    session = http_sessions(running.url)
    for username, password in [
        ("alice", "wrong"),
        ("nobody", "x"),
        ("alice", ""),
        ("*)(uid=*", "alice-secret"),
        ("*", "bob-secret"),
    ]:
        status, body = await login(session, username, password)
        assert (status, body["message"]) == (400, "login refused"), username
    for data in [{"username": "alice"}, {"username": 1, "password": "x"}]:
        status, body = await call(session, "POST", "/api/auth/login", json={"data": data})
        assert status == 400
        assert "username" in body["message"]
    status, _ = await call(session, "GET", "/api/cases")
    assert status == 401


async def test_auth_config_reports_ldap_and_nothing_secret(
    slapd_server: SlapdServer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    config = server_config(tmp_path, auth={"backend": ldap_backend(slapd_server)})
    running = await fusion_server(config)
    status, body = await call(http_sessions(running.url), "GET", "/api/auth/config")
    assert status == 200
    assert body["data"] == {"type": "ldap", "parameters": {"mode": "search"}}


async def test_directory_stopped_answers_503_and_recovers(
    slapd_factory: Callable[..., SlapdServer],
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    directory = slapd_factory()
    config = server_config(tmp_path, auth={"backend": ldap_backend(directory)})
    running = await fusion_server(config)
    logged_in = http_sessions(running.url)
    assert (await login(logged_in, "bob", "bob-secret"))[0] == 200

    directory.stop()
    other = http_sessions(running.url)
    status, body = await login(other, "alice", "alice-secret")
    assert status == 503
    assert body["status"] == 503
    assert body["message"]
    # Sessions opened before keep working: they live in the shared store.
    assert (await call(logged_in, "GET", "/api/cases"))[0] == 200

    directory.start()
    assert (await login(other, "alice", "alice-secret"))[0] == 200


async def test_readme_example_decodes_and_logs_in(
    slapd_server: SlapdServer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LDAP_BIND_PASSWORD", slapd_server.service_password)
    text = README_EXAMPLE.format(
        host_port=slapd_server.url.removeprefix("ldap://"), ca_file=slapd_server.ca_file
    )
    path = tmp_path / "fusion.yml"
    path.write_text(text + f"storage:\n  data_dir: {tmp_path / 'data'}\n")
    config = load_config(path)
    assert config.auth is not None
    backend = config.auth.backend_config
    assert isinstance(backend, LDAPBackendConfig)
    assert backend.bind_password == slapd_server.service_password

    running = await fusion_server(config)
    session = http_sessions(running.url)
    status, body = await login(session, "bob", "bob-secret")
    assert status == 200, body
    assert body["data"]["groups"] == ["analysts", "operators"]
    # dave is in no allowed group
    assert (await login(session, "dave", "dave-secret"))[0] == 400
    # The directory's spelling names the identity, whatever the login's case.
    status, body = await login(session, "Bob", "bob-secret")
    assert (status, body["data"]["username"]) == (200, "bob")
