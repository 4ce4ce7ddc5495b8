"""``type: keycloak``: the older front-ends' single sign-on, against the test
provider laid out as a Keycloak realm (real HTTP on loopback, signed JWTs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fusion_testing.fixtures_server import (
    HTTPSessionFactory,
    ServerFactory,
    call,
    server_config,
)
from fusion_testing.oidc_issuer import OIDCIssuer, pkce_pair

from fusion.server import ConfigError
from fusion.server.auth.oidc import KeycloakBackendConfig
from fusion.server.config import load_config

README = Path(__file__).resolve().parents[2] / "packages" / "fusion-server" / "README.md"


def keycloak_backend(realm: OIDCIssuer, **overrides: Any) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "type": "keycloak",
        "host": realm.host,
        "realm": realm.realm,
        "client_id": realm.client_id,
        "client_secret": realm.client_secret,
        "redirect_uri": realm.redirect_uri,
        "timeout": 2,
    }
    backend.update(overrides)
    return backend


def front_end_login_url(parameters: dict[str, Any]) -> str:
    """The URL the older front-ends' login page builds from the auth config
    (its ``authenticate()``), without the query."""
    host = str(parameters["host"])
    host = host.rstrip("/") if host.startswith("http") else "https://" + host.rstrip("/")
    prefix = "/auth" if parameters.get("include_auth") else ""
    return f"{host}{prefix}/realms/{parameters['realm']}/protocol/openid-connect/auth"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("base_path", ["", "/auth"], ids=["keycloak", "keycloak-under-auth"])
async def test_front_end_flow_config_then_code_login(
    base_path: str,
    store_url: str,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    realm = OIDCIssuer(realm="cert", base_path=base_path, redirect_uri="http://127.0.0.1/login")
    await realm.start()
    try:
        config = server_config(
            tmp_path,
            shared_store={"url": store_url},
            auth={"backend": keycloak_backend(realm)},
        )
        running = await fusion_server(config)
        session = http_sessions(running.url)

        status, body = await call(session, "GET", "/api/auth/config")
        assert status == 200, body
        assert body == {
            "status": 200,
            "count": 2,
            "data": {
                "type": "keycloak",
                "parameters": {
                    "host": realm.host + "/",
                    "realm": "cert",
                    "client": "fusion",
                    "redirect_uri": "http://127.0.0.1/login",
                },
            },
        }
        assert realm.client_secret not in str(body)
        # Where the page sends the browser is the realm's own authorization endpoint.
        async with session.get(f"{realm.issuer}/.well-known/openid-configuration") as response:
            discovery = await response.json()
        assert (
            front_end_login_url(body["data"]["parameters"]) == (discovery["authorization_endpoint"])
        )

        # Keycloak sends the browser back with ?code=...; the page posts only the code.
        code = realm.issue_code("alice", ["/cert/analysts", "responders"])
        status, body = await call(session, "POST", "/api/auth/login", json={"data": {"code": code}})
        assert status == 200, body
        assert body["data"] == {"username": "alice", "groups": ["/cert/analysts", "responders"]}
        status, body = await call(session, "GET", "/api/auth/is_logged")
        assert (status, body["data"]["username"]) == (200, "alice")
        status, body = await call(
            session, "POST", "/api/case", json={"name": "sso", "acs": ["responders"]}
        )
        assert status == 200, body
        assert (await call(session, "GET", "/api/auth/logout"))[0] == 200
        assert (await call(session, "GET", "/api/auth/is_logged"))[0] == 401
    finally:
        await realm.stop()


def test_auth_config_is_the_older_servers_answer_for_their_config() -> None:
    # The older backend answered host=f"{url}/auth/" (include_auth, its default)
    # or f"{url}/"; its config keys url, realm_name, client_id, redirect_uri.
    older = {
        "url": "https://keycloak.domain.lan",
        "client_id": "helium",
        "realm_name": "master",
        "redirect_uri": "https://helium.domain.lan/login",
    }
    for include_auth, older_host in [
        (True, "https://keycloak.domain.lan/auth/"),
        (False, "https://keycloak.domain.lan/"),
    ]:
        config = msgspec.convert(
            {
                "type": "keycloak",
                "host": older["url"] + ("/auth" if include_auth else ""),
                "realm": older["realm_name"],
                "client_id": older["client_id"],
                "client_secret": "not-in-the-answer",
                "redirect_uri": older["redirect_uri"],
            },
            KeycloakBackendConfig,
        )
        info = config.build().info()
        assert (info.type, info.parameters) == (
            "keycloak",
            {
                "host": older_host,
                "realm": "master",
                "client": "helium",
                "redirect_uri": "https://helium.domain.lan/login",
            },
        )
        assert config.issuer == older_host + "realms/master"


async def test_identity_comes_from_the_access_token_groups_claim(
    keycloak_realm: OIDCIssuer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    # The older backend read preferred_username and groups from the access
    # token: an ID token naming someone else does not matter.
    config = server_config(tmp_path, auth={"backend": keycloak_backend(keycloak_realm)})
    running = await fusion_server(config)
    session = http_sessions(running.url)
    other_id_token = keycloak_realm.mint(keycloak_realm.claims("mallory", ["admins"]))
    code = keycloak_realm.issue_code("bob", ["/cert"], id_token=other_id_token)
    status, body = await call(session, "POST", "/api/auth/login", json={"data": {"code": code}})
    assert (status, body["data"]) == (200, {"username": "bob", "groups": ["/cert"]})

    # Realm roles instead of groups, on request; PKCE when the page uses it.
    config = server_config(
        tmp_path,
        auth={"backend": keycloak_backend(keycloak_realm, groups_claim="realm_access.roles")},
    )
    running = await fusion_server(config)
    session = http_sessions(running.url)
    verifier, challenge = pkce_pair()
    code = keycloak_realm.issue_code(
        "carol", ["/cert"], code_challenge=challenge, realm_access={"roles": ["cert-admin"]}
    )
    status, body = await call(
        session,
        "POST",
        "/api/auth/login",
        json={"data": {"code": code, "code_verifier": verifier}},
    )
    assert (status, body["data"]) == (200, {"username": "carol", "groups": ["cert-admin"]})


async def test_wrong_code_is_refused_with_400(
    keycloak_realm: OIDCIssuer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    config = server_config(tmp_path, auth={"backend": keycloak_backend(keycloak_realm)})
    running = await fusion_server(config)
    session = http_sessions(running.url)

    status, body = await call(
        session, "POST", "/api/auth/login", json={"data": {"code": "never-issued"}}
    )
    assert (status, body) == (400, {"status": 400, "message": "login refused"})
    code = keycloak_realm.issue_code("alice")
    assert (await call(session, "POST", "/api/auth/login", json={"data": {"code": code}}))[0] == 200
    status, body = await call(session, "POST", "/api/auth/login", json={"data": {"code": code}})
    assert (status, body["message"]) == (400, "login refused")  # a code works once
    for data in [{}, {"code": ""}, {"code": 5}, {"username": "alice", "password": "x"}]:
        status, body = await call(session, "POST", "/api/auth/login", json={"data": data})
        assert (status, body["status"]) == (400, 400), data
        assert "code" in body["message"]


async def test_keycloak_unreachable_answers_503(
    keycloak_realm: OIDCIssuer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    config = server_config(tmp_path, auth={"backend": keycloak_backend(keycloak_realm)})
    await keycloak_realm.stop()
    running = await fusion_server(config)  # starts although Keycloak is away
    session = http_sessions(running.url)

    status, body = await call(session, "POST", "/api/auth/login", json={"data": {"code": "c"}})
    assert (status, body["status"]) == (503, 503)
    assert body["message"] == "authentication backend unavailable"
    # The front-end can still show its login button.
    status, body = await call(session, "GET", "/api/auth/config")
    assert (status, body["data"]["type"]) == (200, "keycloak")

    await keycloak_realm.start()
    code = keycloak_realm.issue_code("alice")
    status, body = await call(session, "POST", "/api/auth/login", json={"data": {"code": code}})
    assert (status, body["data"]["username"]) == (200, "alice")


async def test_tokens_of_another_client_or_realm_are_refused(
    keycloak_realm: OIDCIssuer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    config = server_config(tmp_path, auth={"backend": keycloak_backend(keycloak_realm)})
    running = await fusion_server(config)
    session = http_sessions(running.url)

    # A code whose access token was issued to another client of the realm.
    code = keycloak_realm.issue_code("alice", azp="other-client")
    status, body = await call(session, "POST", "/api/auth/login", json={"data": {"code": code}})
    assert (status, body["message"]) == (400, "login refused")

    def access_token(**extra: Any) -> str:
        claims = keycloak_realm.access_claims(keycloak_realm.claims("robot", ["automation"]))
        claims.update(extra)
        return keycloak_realm.mint({k: v for k, v in claims.items() if v is not None})

    # Keycloak's own shape (aud: account, azp: fusion) and a token whose aud
    # names this client are accepted as Bearer tokens.
    for token in [access_token(), access_token(aud=["fusion", "account"], azp="other-client")]:
        status, body = await call(session, "GET", "/api/cases", headers=bearer(token))
        assert status == 200, body
    refused = [
        access_token(azp="other-client"),
        access_token(aud="other-client", azp=None),
        access_token(aud=None, azp=None),
        access_token(iss=f"{keycloak_realm.host}/realms/other"),
        access_token(iss=keycloak_realm.host),
    ]
    for token in refused:
        status, body = await call(session, "GET", "/api/cases", headers=bearer(token))
        assert (status, body["status"]) == (401, 401), token


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    good: dict[str, Any] = {
        "type": "keycloak",
        "host": "https://sso.example.org",
        "realm": "cert",
        "client_id": "fusion",
        "redirect_uri": "https://fusion.example.org/login",
    }
    decoded = server_config(tmp_path, auth={"backend": good})
    assert decoded.auth is not None
    backend = decoded.auth.backend
    assert isinstance(backend, KeycloakBackendConfig)
    assert backend.issuer == "https://sso.example.org/realms/cert"
    # Encoded and decoded again (the derived issuer is accepted back).
    again = msgspec.convert(msgspec.to_builtins(backend), KeycloakBackendConfig)
    assert again == backend
    refused: list[tuple[dict[str, Any], str]] = [
        ({"realm": "cert/x"}, r"auth\.backend\.realm"),
        ({"host": "sso.example.org"}, r"host must be an http\(s\) URL"),
        ({"issuer": "https://other.example.org"}, r"issuer is derived from host and realm"),
        ({"algorithms": ["HS256"]}, r"refused"),
        ({"realm_name": "cert"}, r"realm_name"),
    ]
    for bad, message in refused:
        with pytest.raises(ConfigError, match=message):
            server_config(tmp_path, auth={"backend": good | bad})


def _readme_section() -> str:
    text = README.read_text()
    start = text.index("### Single sign-on for the older front-ends (Keycloak)")
    return text[start : text.index("\n### ", start + 1)]


async def test_readme_example_decodes_and_answers_as_documented(
    keycloak_realm: OIDCIssuer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    section = _readme_section()
    yaml_block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    json_block = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert yaml_block is not None
    assert json_block is not None

    def localise(text: str) -> str:
        return text.replace("https://sso.example.org", keycloak_realm.host).replace(
            "https://fusion.example.org/login", keycloak_realm.redirect_uri
        )

    monkeypatch.setenv("KEYCLOAK_CLIENT_SECRET", keycloak_realm.client_secret)
    path = tmp_path / "fusion.yml"
    path.write_text(localise(yaml_block.group(1)) + f"storage:\n  data_dir: {tmp_path / 'data'}\n")
    config = load_config(path)
    assert config.auth is not None
    assert isinstance(config.auth.backend, KeycloakBackendConfig)

    running = await fusion_server(config)
    session = http_sessions(running.url)
    status, body = await call(session, "GET", "/api/auth/config")
    assert status == 200
    assert body == msgspec.json.decode(localise(json_block.group(1)))
    code = keycloak_realm.issue_code("erin", ["/cert"])
    status, body = await call(session, "POST", "/api/auth/login", json={"data": {"code": code}})
    assert (status, body["data"]) == (200, {"username": "erin", "groups": ["/cert"]})
