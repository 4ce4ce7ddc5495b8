"""The auth routes over real sockets, on memory:// and a real redis-server."""

from __future__ import annotations

from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest
from fusion_testing.clock import StoreClock
from fusion_testing.fixtures_server import (
    FEDERATION_KEY,
    ROBOT_KEY,
    HTTPSessionFactory,
    RunningServer,
    ServerFactory,
    call,
    login,
    server_config,
)
from yarl import URL

from fusion.concept import AuthInfo, Identity


@pytest.fixture
async def server(tmp_path: Path, store_url: str, fusion_server: ServerFactory) -> RunningServer:
    return await fusion_server(server_config(tmp_path, shared_store={"url": store_url}))


def _session_id(session: aiohttp.ClientSession, server: RunningServer) -> str:
    return session.cookie_jar.filter_cookies(URL(server.url))["FUSION_SESSION"].value


def _set_cookie(response: aiohttp.ClientResponse) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        cookie.load(header)
    return cookie


async def test_login_sets_a_session_cookie_with_its_attributes(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url)
    body = {"data": {"username": "alice", "password": "alice-password"}}
    async with session.post("/api/auth/login", json=body) as response:
        assert response.status == 200
        envelope = await response.json()
        morsel = _set_cookie(response)["FUSION_SESSION"]
    assert envelope == {
        "status": 200,
        "data": {"username": "alice", "groups": ["analysts"]},
        "count": 2,
    }
    assert len(morsel.value) == 43
    assert morsel["httponly"] is True
    assert morsel["path"] == "/"
    assert morsel["samesite"] == "Lax"
    assert not morsel["secure"]
    status, logged = await call(session, "GET", "/api/auth/is_logged")
    assert status == 200
    assert Identity.from_dict(logged["data"]) == Identity(
        username="alice", groups=frozenset({"analysts"})
    )


async def test_cookie_attributes_follow_the_configuration(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    session_config = {
        "cookie_name": "SVC_SESSION",
        "domain": "example.org",
        "path": "/api",
        "max_age": 600,
        "secure": True,
        "samesite": "Strict",
        "httponly": False,
    }
    config = server_config(tmp_path, auth={"session": session_config})
    server = await fusion_server(config)
    session = http_sessions(server.url)
    body = {"data": {"username": "alice", "password": "alice-password"}}
    async with session.post("/api/auth/login", json=body) as response:
        assert response.status == 200
        morsel = _set_cookie(response)["SVC_SESSION"]
    assert morsel["domain"] == "example.org"
    assert morsel["path"] == "/api"
    assert morsel["max-age"] == "600"
    assert morsel["secure"] is True
    assert morsel["samesite"] == "Strict"
    assert not morsel["httponly"]
    # The cookie works when sent back under its configured name.
    status, _ = await call(
        session, "GET", "/api/auth/is_logged", headers={"Cookie": f"SVC_SESSION={morsel.value}"}
    )
    assert status == 200


async def test_each_login_rotates_the_session_id(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url)
    await login(session, "alice")
    first = _session_id(session, server)
    await login(session, "alice")
    second = _session_id(session, server)
    assert first != second
    # The replaced session is revoked: a stolen pre-login id is worthless.
    old = http_sessions(server.url)
    status, envelope = await call(
        old, "GET", "/api/auth/is_logged", headers={"Cookie": f"FUSION_SESSION={first}"}
    )
    assert (status, envelope["message"]) == (401, "authentication required")
    status, _ = await call(session, "GET", "/api/auth/is_logged")
    assert status == 200


async def test_logout_revokes_the_session_for_every_holder(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url)
    await login(session, "bob")
    session_id = _session_id(session, server)
    copy = http_sessions(server.url)
    cookie = {"Cookie": f"FUSION_SESSION={session_id}"}
    assert (await call(copy, "GET", "/api/auth/is_logged", headers=cookie))[0] == 200
    async with session.get("/api/auth/logout") as response:
        assert response.status == 200
        assert await response.json() == {"status": 200}
        morsel = _set_cookie(response)["FUSION_SESSION"]
        assert morsel.value == ""
        assert morsel["max-age"] == "0"
    status, envelope = await call(copy, "GET", "/api/auth/is_logged", headers=cookie)
    assert (status, envelope) == (401, {"status": 401, "message": "authentication required"})
    status, envelope = await call(session, "GET", "/api/auth/logout")
    assert (status, envelope["message"]) == (401, "no session")


async def test_logout_needs_a_session_not_a_key(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(session, "GET", "/api/auth/logout")
    assert (status, envelope["status"]) == (401, 401)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"data": {"username": "alice", "password": "wrong"}}, "login refused"),
        ({"data": {"username": "nobody", "password": "alice-password"}}, "login refused"),
        ({"data": {"username": "alice"}}, "login body must be"),
        ({"data": {"username": 1, "password": "x"}}, "login body must be"),
        ({"data": "alice"}, 'login body must be {"data": {...}}'),
        ({"username": "alice", "password": "alice-password"}, 'login body must be {"data"'),
        ([], 'login body must be {"data"'),
    ],
)
async def test_login_refusals_are_400_without_cookie(
    server: RunningServer, http_sessions: HTTPSessionFactory, body: object, reason: str
) -> None:
    session = http_sessions(server.url)
    async with session.post("/api/auth/login", json=body) as response:
        envelope = await response.json()
        assert response.status == 400
        assert "Set-Cookie" not in response.headers
    assert envelope["status"] == 400
    assert envelope["message"].startswith(reason)
    assert (await call(session, "GET", "/api/auth/is_logged"))[0] == 401


async def test_login_body_that_is_not_json_is_400(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url)
    status, envelope = await call(
        session,
        "POST",
        "/api/auth/login",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert status == 400
    assert envelope["message"].startswith("invalid JSON body")


async def test_failed_logins_are_throttled_per_username(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url)
    for _ in range(3):
        assert (await login(session, "alice", "wrong"))[0] == 400
    async with session.post(
        "/api/auth/login", json={"data": {"username": "alice", "password": "alice-password"}}
    ) as response:
        assert response.status == 429
        retry_after = int(response.headers["Retry-After"])
        envelope = await response.json()
    assert 1 <= retry_after <= 60
    assert envelope == {"status": 429, "message": "too many failed logins: try again later"}
    # Another username from the same address is not locked out yet.
    assert (await login(session, "bob"))[0] == 200


async def test_failed_logins_are_throttled_per_client_address(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url)
    for index in range(6):
        assert (await login(session, f"user{index}", "wrong"))[0] == 400
    status, envelope = await login(session, "bob")
    assert (status, envelope["status"]) == (429, 429)


async def test_success_resets_the_username_counter(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url)
    for _ in range(2):
        assert (await login(session, "alice", "wrong"))[0] == 400
    assert (await login(session, "alice"))[0] == 200
    for _ in range(2):
        assert (await login(session, "alice", "wrong"))[0] == 400
    assert (await login(session, "alice"))[0] == 200


async def test_api_keys_identify_robots_and_the_federation(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(robot, "GET", "/api/auth/is_logged")
    assert (status, envelope["data"]) == (200, {"username": "robot", "groups": ["robots"]})
    hub = http_sessions(server.url, headers={"X-Fusion-API-Token": FEDERATION_KEY})
    status, envelope = await call(hub, "GET", "/api/auth/is_logged")
    assert (status, envelope["data"]) == (200, {"username": "hub", "groups": []})
    wrong = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY + "x"})
    status, envelope = await call(wrong, "GET", "/api/auth/is_logged")
    assert (status, envelope) == (401, {"status": 401, "message": "invalid API key"})


async def test_bearer_token_without_bearer_support_is_401(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url, headers={"Authorization": "Bearer abc.def.ghi"})
    async with session.get("/api/auth/is_logged") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert (await response.json())["message"] == "invalid bearer token"


async def test_garbage_session_cookies_are_anonymous(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url)
    for value in ["x", "a" * 43, "../../etc/passwd", "é" * 43]:
        status, envelope = await call(
            session, "GET", "/api/auth/is_logged", headers={"Cookie": f"FUSION_SESSION={value}"}
        )
        assert (status, envelope["status"]) == (401, 401)


async def test_auth_config_and_identities(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    anonymous = http_sessions(server.url)
    status, envelope = await call(anonymous, "GET", "/api/auth/config")
    assert status == 200
    assert AuthInfo.from_dict(envelope["data"]) == AuthInfo(type="basic", parameters={})
    assert (await call(anonymous, "GET", "/api/auth/identities"))[0] == 401
    alice = http_sessions(server.url)
    await login(alice, "alice")
    await login(http_sessions(server.url), "bob")
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    await call(robot, "GET", "/api/auth/is_logged")
    status, envelope = await call(alice, "GET", "/api/auth/identities")
    assert status == 200
    assert envelope["data"] == [
        {"username": "alice", "groups": ["analysts"]},
        {"username": "bob", "groups": ["readers"]},
        {"username": "robot", "groups": ["robots"]},
    ]
    assert envelope["count"] == 3


async def test_without_a_backend_login_and_config_are_501(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    config = server_config(tmp_path, auth={"backend": None, "api_keys": [], "federation": None})
    server = await fusion_server(config)
    session = http_sessions(server.url)
    status, envelope = await login(session, "alice")
    assert (status, envelope["message"]) == (501, "no authentication backend configured")
    status, envelope = await call(session, "GET", "/api/auth/config")
    assert (status, envelope["status"]) == (501, 501)


async def test_session_expires_with_its_ttl(
    tmp_path: Path,
    store_url: str,
    store_clock: StoreClock,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    # Long enough on Redis for login and a first call on any load; on
    # memory:// the test's clock passes it.
    ttl = 3.0
    config = server_config(
        tmp_path, shared_store={"url": store_url}, auth={"session": {"ttl": ttl}}
    )
    server = await fusion_server(config, store=store_clock.create_store(store_url))
    session = http_sessions(server.url)
    await login(session, "alice")
    assert (await call(session, "GET", "/api/auth/is_logged"))[0] == 200

    async def logged_out() -> bool:
        return (await call(session, "GET", "/api/auth/is_logged"))[0] == 401

    await store_clock.advance(ttl, logged_out, "the session expired")
