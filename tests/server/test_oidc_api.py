"""OIDC logins and Bearer tokens through the real auth API, against the test provider."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fusion_testing.fixtures_server import (
    HTTPSessionFactory,
    ServerFactory,
    call,
    server_config,
)
from fusion_testing.oidc_issuer import OIDCIssuer, pkce_pair

from fusion.server.auth.oidc import OIDCBackendConfig
from fusion.server.config import load_config

# The README's example, with the test provider's values substituted.
README_EXAMPLE = """\
auth:
  backend:
    type: oidc
    issuer: {issuer}
    client_id: fusion
    client_secret: ${{OIDC_CLIENT_SECRET}}
    redirect_uri: {redirect_uri}
    scopes: [openid, profile, email]
    username_claim: preferred_username
    groups_claim: realm_access.roles
    allowed_groups: [cert]
"""


def oidc_backend(provider: OIDCIssuer, **overrides: Any) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "type": "oidc",
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        "redirect_uri": provider.redirect_uri,
        "timeout": 2,
    }
    backend.update(overrides)
    return backend


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_code_login_gives_a_working_session(
    oidc_issuer: OIDCIssuer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    config = server_config(tmp_path, auth={"backend": oidc_backend(oidc_issuer)})
    running = await fusion_server(config)
    session = http_sessions(running.url)
    verifier, challenge = pkce_pair()
    code = oidc_issuer.issue_code("alice", ["analysts"], code_challenge=challenge)

    status, body = await call(
        session, "POST", "/api/auth/login", json={"data": {"code": code, "code_verifier": verifier}}
    )
    assert status == 200, body
    assert body["data"] == {"username": "alice", "groups": ["analysts"]}
    status, body = await call(session, "GET", "/api/auth/is_logged")
    assert (status, body["data"]["username"]) == (200, "alice")
    assert (await call(session, "POST", "/api/case", json={"name": "oidc"}))[0] == 200

    # The same code again, and malformed bodies: 400, never 500.
    status, body = await call(
        session, "POST", "/api/auth/login", json={"data": {"code": code, "code_verifier": verifier}}
    )
    assert (status, body["message"]) == (400, "login refused")
    for data in [{}, {"code": 5}, {"code": "x", "code_verifier": 1}]:
        status, body = await call(session, "POST", "/api/auth/login", json={"data": data})
        assert status == 400
        assert "code" in body["message"]


async def test_bearer_tokens_on_api_routes(
    oidc_issuer: OIDCIssuer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    config = server_config(tmp_path, auth={"backend": oidc_backend(oidc_issuer)})
    running = await fusion_server(config)
    session = http_sessions(running.url)
    token = oidc_issuer.mint(
        oidc_issuer.claims("robot", ["automation"]), key=oidc_issuer.key("ES256")
    )

    status, body = await call(
        session,
        "POST",
        "/api/case",
        json={"name": "by bearer", "acs": ["automation"]},
        headers=bearer(token),
    )
    assert status == 200, body
    status, body = await call(session, "GET", "/api/cases", headers=bearer(token))
    assert status == 200
    assert [case["name"] for case in body["data"]] == ["by bearer"]
    # No cookie was set: every request carries its token.
    assert (await call(session, "GET", "/api/cases"))[0] == 401

    # A rotated key works at once; forged tokens are refused with 401.
    oidc_issuer.rotate("RS256")
    rotated = oidc_issuer.mint(oidc_issuer.claims("robot", ["automation"]))
    assert (await call(session, "GET", "/api/cases", headers=bearer(rotated)))[0] == 200
    forged = [
        oidc_issuer.forge(oidc_issuer.claims("robot"), alg="none"),
        oidc_issuer.forge(
            oidc_issuer.claims("robot"), alg="HS256", secret=oidc_issuer.key("RS256").public_pem()
        ),
        oidc_issuer.mint(oidc_issuer.claims("robot", exp=int(time.time()) - 120)),
        oidc_issuer.mint(oidc_issuer.claims("robot", aud="other")),
        "garbage",
    ]
    for token in forged:
        status, body = await call(session, "GET", "/api/cases", headers=bearer(token))
        assert status == 401, token
        assert body["status"] == 401


async def test_auth_config_tells_a_web_ui_how_to_start_the_flow(
    oidc_issuer: OIDCIssuer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    config = server_config(tmp_path, auth={"backend": oidc_backend(oidc_issuer)})
    running = await fusion_server(config)
    status, body = await call(http_sessions(running.url), "GET", "/api/auth/config")
    assert status == 200
    assert body["data"]["type"] == "oidc"
    parameters = body["data"]["parameters"]
    assert parameters["authorization_endpoint"] == f"{oidc_issuer.issuer}/authorize"
    assert parameters["client_id"] == oidc_issuer.client_id
    assert parameters["redirect_uri"] == oidc_issuer.redirect_uri
    assert oidc_issuer.client_secret not in str(body)


async def test_provider_down_answers_503(
    oidc_issuer: OIDCIssuer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    config = server_config(tmp_path, auth={"backend": oidc_backend(oidc_issuer)})
    token = oidc_issuer.mint(oidc_issuer.claims("robot"))
    await oidc_issuer.stop()
    running = await fusion_server(config)  # starts although the provider is away
    session = http_sessions(running.url)

    status, body = await call(session, "GET", "/api/cases", headers=bearer(token))
    assert (status, body["status"]) == (503, 503)
    status, body = await call(session, "POST", "/api/auth/login", json={"data": {"code": "c"}})
    assert (status, body["status"]) == (503, 503)

    await oidc_issuer.start()
    assert (await call(session, "GET", "/api/cases", headers=bearer(token)))[0] == 200


async def test_readme_example_decodes_and_logs_in(
    oidc_issuer: OIDCIssuer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OIDC_CLIENT_SECRET", oidc_issuer.client_secret)
    text = README_EXAMPLE.format(issuer=oidc_issuer.issuer, redirect_uri=oidc_issuer.redirect_uri)
    path = tmp_path / "fusion.yml"
    path.write_text(text + f"storage:\n  data_dir: {tmp_path / 'data'}\n")
    config = load_config(path)
    assert config.auth is not None
    assert isinstance(config.auth.backend_config, OIDCBackendConfig)

    running = await fusion_server(config)
    session = http_sessions(running.url)
    code = oidc_issuer.issue_code("erin", realm_access={"roles": ["cert", "user"]})
    status, body = await call(session, "POST", "/api/auth/login", json={"data": {"code": code}})
    assert status == 200, body
    assert body["data"] == {"username": "erin", "groups": ["cert", "user"]}
    code = oidc_issuer.issue_code("frank", realm_access={"roles": ["user"]})
    status, _ = await call(session, "POST", "/api/auth/login", json={"data": {"code": code}})
    assert status == 400
