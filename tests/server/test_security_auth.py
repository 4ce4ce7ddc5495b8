"""Security findings on authentication and access, reproduced over real sockets.

Concurrent logins against the throttle (one process and two replicas), LDAP
usernames a directory takes as equal, webhook URLs that leave their prefix,
the access rule of the older servers, audit of refused credentials, and
cookie-authenticated bodies.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import (
    FEDERATION_KEY,
    ROBOT_KEY,
    HTTPSessionFactory,
    RunningServer,
    ServerFactory,
    ServerProcess,
    audit_records,
    call,
    login,
    server_config,
    server_config_dict,
    write_config,
)
from fusion_testing.services import free_port
from fusion_testing.slapd import SlapdServer
from fusion_testing.tls import make_tls_files

from fusion.server import FusionServer
from fusion.server.config import FusionServerConfig, decode_config
from fusion.server.event.webhook_url import url_under_prefix

PER_USERNAME = 5
PER_IP = 20
THROTTLE = {"window": 600, "max_failures_per_username": PER_USERNAME, "max_failures_per_ip": PER_IP}


def _throttled_config(tmp_path: Path, store_url: str, **overrides: Any) -> dict[str, Any]:
    return server_config_dict(
        tmp_path,
        shared_store={"url": store_url},
        server={"trusted_proxies": ["127.0.0.0/8"]},
        auth={"throttle": THROTTLE, **overrides.pop("auth", {})},
        **overrides,
    )


async def _login_from(
    session: aiohttp.ClientSession, username: str, password: str, address: str
) -> int:
    """A login as if from ``address`` (the test server trusts loopback as its proxy)."""
    async with session.post(
        "/api/auth/login",
        json={"data": {"username": username, "password": password}},
        headers={"X-Forwarded-For": address},
    ) as response:
        await response.read()
        return response.status


@pytest.fixture
async def throttled(
    tmp_path: Path, store_url: str, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> aiohttp.ClientSession:
    """A client of a server on ``store_url`` with the limits above (per username
    and per address), whose loopback peer is a trusted proxy."""
    config = decode_config(_throttled_config(tmp_path, store_url), FusionServerConfig)
    server = await fusion_server(config)
    return http_sessions(server.url)


# -- 1. concurrent logins and the throttle ----------------------------------------
async def test_a_burst_of_wrong_logins_verifies_at_most_the_limit(
    throttled: aiohttp.ClientSession,
) -> None:
    session = throttled
    # 30 wrong passwords, all at once, from one address each (so only the
    # per-username limit applies). No right one among them: a success clears
    # its username's failures, and where it landed in the burst would decide
    # what the attempts after it get.
    attempts = [
        _login_from(session, "alice", "wrong", f"198.51.100.{index}") for index in range(30)
    ]
    statuses = await asyncio.gather(*attempts)
    counted = Counter(statuses)
    # Exactly the limit was checked against the password (400); every other
    # attempt got 429 without any verification.
    assert counted == {400: PER_USERNAME, 429: 30 - PER_USERNAME}, counted
    # Inside the throttled window the right password is refused too.
    assert await _login_from(session, "alice", "alice-password", "198.51.100.201") == 429
    # Another user is not locked out.
    assert await _login_from(session, "bob", "bob-password", "198.51.100.202") == 200


async def test_a_burst_from_one_address_verifies_at_most_its_limit(
    throttled: aiohttp.ClientSession,
) -> None:
    session = throttled
    # 150 wrong logins for 150 usernames from one address, at once.
    statuses = await asyncio.gather(
        *(_login_from(session, f"user{index}", "wrong", "203.0.113.7") for index in range(150))
    )
    assert Counter(statuses) == {400: PER_IP, 429: 150 - PER_IP}
    assert await _login_from(session, "alice", "alice-password", "203.0.113.7") == 429
    # The users themselves, from their own addresses, log in at once.
    assert await _login_from(session, "alice", "alice-password", "203.0.113.8") == 200


async def test_successful_logins_do_not_use_up_the_limits(
    throttled: aiohttp.ClientSession,
) -> None:
    session = throttled
    # An office behind one address: more good logins than the address limit.
    for _ in range(PER_IP + 5):
        assert await _login_from(session, "carol", "carol-password", "192.0.2.1") == 200
    # Failures below the limit, then a success, clear the username's count.
    for _ in range(PER_USERNAME - 1):
        assert await _login_from(session, "alice", "wrong", "192.0.2.2") == 400
    assert await _login_from(session, "alice", "alice-password", "192.0.2.2") == 200
    for _ in range(PER_USERNAME):
        assert await _login_from(session, "alice", "wrong", "192.0.2.3") == 400
    assert await _login_from(session, "alice", "wrong", "192.0.2.3") == 429
    # A malformed body is not a failure.
    for _ in range(PER_IP + 1):
        async with session.post(
            "/api/auth/login",
            json={"data": {"username": "dave", "password": 1}},
            headers={"X-Forwarded-For": "192.0.2.4"},
        ) as response:
            assert response.status == 400
    assert await _login_from(session, "bob", "bob-password", "192.0.2.4") == 200


@pytest.mark.redis
async def test_concurrent_logins_on_two_replicas_share_one_limit(
    tmp_path: Path, redis_url: str
) -> None:
    config = _throttled_config(tmp_path, redis_url)
    path = write_config(tmp_path / "server.yml", config)
    replicas = [
        ServerProcess(["--config", str(path)], cwd=tmp_path, env={"FUSION_LOG_FILE": str(log)})
        for log in (tmp_path / "first.log", tmp_path / "second.log")
    ]
    try:
        for replica in replicas:
            replica.start()
        async with aiohttp.ClientSession() as session:

            async def attempt(index: int) -> int:
                url = replicas[index % 2].url + "/api/auth/login"
                body = {"data": {"username": "alice", "password": "wrong"}}
                headers = {"X-Forwarded-For": f"198.51.100.{index}"}
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(attempt(index) for index in range(40)))
            assert Counter(statuses) == {400: PER_USERNAME, 429: 40 - PER_USERNAME}
            for replica in replicas:
                url = replica.url + "/api/auth/login"
                body = {"data": {"username": "alice", "password": "alice-password"}}
                async with session.post(url, json=body) as response:
                    assert response.status == 429
    finally:
        codes = [replica.stop() for replica in replicas]
    assert codes == [0, 0]


# -- 6. LDAP usernames ------------------------------------------------------------
@pytest.mark.ldap
async def test_ldap_spellings_of_one_entry_share_its_name_and_its_throttle(
    slapd_server: SlapdServer,
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    backend = {
        "type": "ldap",
        "url": slapd_server.url,
        "bind_dn": slapd_server.service_dn,
        "bind_password": slapd_server.service_password,
        "user_base": slapd_server.people_base,
        "connect_timeout": 2,
        "receive_timeout": 2,
    }
    config = server_config(
        tmp_path,
        auth={
            "backend": backend,
            "throttle": {"window": 600, "max_failures_per_username": 3, "max_failures_per_ip": 100},
        },
    )
    server = await fusion_server(config)
    session = http_sessions(server.url)
    # The directory matches these as alice: the identity is the entry's own uid.
    for spelling in ("ALICE", " alice", "alice ", "\uff41\uff4c\uff49\uff43\uff45", "Alice"):
        status, body = await login(session, spelling, "alice-secret")
        assert (status, body["data"]["username"]) == (200, "alice"), spelling
    status, body = await call(session, "GET", "/api/auth/identities")
    assert [identity["username"] for identity in body["data"]] == ["alice"]
    # Control characters never reach the directory.
    for spelling in ("alice\n", "al\x00ice", "alice\u202e", "\u200balice"):
        status, body = await login(session, spelling, "alice-secret")
        assert (status, body["message"]) == (400, "login refused"), spelling
    # bob throttled under one spelling is throttled under all of them.
    for spelling in ("bob", "Bob", " BOB"):
        assert (await login(session, spelling, "wrong"))[0] == 400
    for spelling in ("bob", "BoB", "bob ", "\uff42\uff4f\uff42"):
        status, body = await login(session, spelling, "bob-secret")
        assert status == 429, (spelling, body)


# -- 7. webhook prefixes -------------------------------------------------------------
PREFIX = "http://127.0.0.1:19999/hooks/"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:19999/hooks/case", True),
        ("HTTP://127.0.0.1:19999/hooks/case", True),
        ("http://127.0.0.1:19999/hooks/a/./b", True),
        ("http://127.0.0.1:19999/hooks/a/../b", True),
        ("http://127.0.0.1:19999/hooks/%63ase", True),
        ("http://127.0.0.1:19999/hooks/case?x=1", True),
        ("http://127.0.0.1:19999/hooks/../evil", False),
        ("http://127.0.0.1:19999/hooks/%2e%2e/evil", False),
        ("http://127.0.0.1:19999/hooks/%2E%2E/evil", False),
        ("http://127.0.0.1:19999/hooks/.%2e/evil", False),
        ("http://127.0.0.1:19999/hooks/a/../../evil", False),
        ("http://127.0.0.1:19999/hooks/..%2fevil", False),
        ("http://127.0.0.1:19999/hooks/..%5cevil", False),
        ("http://127.0.0.1:19999/hooks/..\\evil", False),
        ("http://127.0.0.1:19999/hooksevil", False),
        ("http://127.0.0.1:19999/hooks%2fevil", False),
        ("http://127.0.0.1:19998/hooks/case", False),
        ("http://127.0.0.1/hooks/case", False),
        ("https://127.0.0.1:19999/hooks/case", False),
        ("http://127.0.0.1:19999@evil.example/hooks/case", False),
        ("http://user@127.0.0.1:19999/hooks/case", False),
        ("http://127.0.0.2:19999/hooks/case", False),
        ("http://127.0.0.1:notaport/hooks/case", False),
        ("http://127.0.0.1:19999/hooks/%ff", False),
    ],
)
def test_webhook_urls_are_compared_normalised(url: str, allowed: bool) -> None:
    assert url_under_prefix(url, PREFIX) is allowed


def test_default_ports_and_prefixes_without_a_trailing_slash() -> None:
    assert url_under_prefix("https://hooks.example.org:443/fusion/x", "https://HOOKS.example.org/")
    assert url_under_prefix("http://h.example/hooks/x", "http://h.example:80/hooks")
    assert not url_under_prefix("http://h.example/hooks-evil/x", "http://h.example/hooks")


async def test_case_webhooks_outside_their_prefix_are_refused(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    config = server_config(tmp_path, event={"webhook_prefixes": [PREFIX]})
    server = await fusion_server(config)
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    for url in ("http://127.0.0.1:19999/hooks/../evil", "http://127.0.0.1:19999/hooks/%2e%2e/e"):
        status, body = await call(robot, "POST", "/api/case", json={"name": "c", "webhooks": [url]})
        assert status == 400, body
        assert "is not allowed" in body["message"]
    status, body = await call(
        robot, "POST", "/api/case", json={"name": "c", "webhooks": [PREFIX + "case"]}
    )
    assert status == 200, body
    guid = body["data"]["guid"]
    status, body = await call(
        robot, "PUT", f"/api/case/{guid}", json={"webhooks": [PREFIX + "%2e%2e/evil"]}
    )
    assert status == 400, body
    status, body = await call(robot, "GET", f"/api/case/{guid}")
    assert body["data"]["webhooks"] == [PREFIX + "case"]


# -- 8. the access rule of the older servers ----------------------------------------------
# alice: analysts; bob: readers; mallory: no group. (read, change) answers.
ACCESS_MATRIX: list[tuple[dict[str, list[str]], dict[str, tuple[int, int]]]] = [
    ({"acs": [], "acs_ro": []}, {"alice": (200, 200), "bob": (200, 200), "mallory": (200, 200)}),
    (
        {"acs": ["analysts"], "acs_ro": []},
        {"alice": (200, 200), "bob": (403, 403), "mallory": (403, 403)},
    ),
    (
        {"acs": [], "acs_ro": ["readers"]},
        {"alice": (200, 200), "bob": (200, 403), "mallory": (200, 200)},
    ),
    (
        {"acs": ["analysts", "readers"], "acs_ro": ["readers"]},
        {"alice": (200, 200), "bob": (200, 403), "mallory": (403, 403)},
    ),
    # An operator demotes one member of a group by naming the member in acs_ro.
    (
        {"acs": ["analysts"], "acs_ro": ["alice"]},
        {"alice": (200, 403), "bob": (403, 403), "mallory": (403, 403)},
    ),
    (
        {"acs": ["mallory"], "acs_ro": ["analysts", "readers"]},
        {"alice": (200, 403), "bob": (200, 403), "mallory": (200, 200)},
    ),
]


@pytest.mark.parametrize(("lists", "expected"), ACCESS_MATRIX)
async def test_access_matrix(
    lists: dict[str, list[str]],
    expected: dict[str, tuple[int, int]],
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    server = await fusion_server(server_config(tmp_path))
    hub = http_sessions(server.url, headers={"X-Fusion-API-Token": FEDERATION_KEY})
    status, body = await call(hub, "POST", "/api/case", json={"name": "matrix", **lists})
    assert status == 200, body
    guid = body["data"]["guid"]
    for username, (read, change) in expected.items():
        session = http_sessions(server.url)
        assert (await login(session, username))[0] == 200
        status, _ = await call(session, "GET", f"/api/case/{guid}")
        assert status == read, (username, "read")
        status, body = await call(
            session, "PUT", f"/api/case/{guid}", json={"description": f"by {username}"}
        )
        assert status == change, (username, "change", body)
        listed = await call(session, "GET", "/api/cases")
        assert (guid in {case["guid"] for case in listed[1]["data"]}) is (read == 200)
    status, body = await call(hub, "GET", f"/api/case/{guid}")
    writers = [name for name, (_, change) in expected.items() if change == 200]
    if writers:
        assert body["data"]["description"] == f"by {writers[-1]}"
    assert body["data"]["acs"] == sorted(lists["acs"])


# -- 13. audit of refused credentials ----------------------------------------------------


async def test_refused_credentials_are_audited_with_what_was_tried(
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = server_config(
        tmp_path,
        auth={
            "throttle": {"window": 600, "max_failures_per_username": 1, "max_failures_per_ip": 50}
        },
    )
    server = await fusion_server(config)
    session = http_sessions(server.url)
    forger = http_sessions(server.url, headers={"X-Fusion-API-Token": "not-a-key-0123456789"})
    with caplog.at_level(logging.INFO, logger="fusion.audit"):
        await login(session, "alice", "wrong")
        await login(session, "alice", "wrong")
        await login(session, "x" * 500, "wrong")
        status, body = await call(forger, "GET", "/api/cases")
    assert (status, body["message"]) == (401, "invalid API key")
    audits = audit_records(caplog)
    summary = [(a["who"], a["action"], a["granted"], a["context"].get("reason")) for a in audits]
    assert summary == [
        ("alice", "login", False, "login refused"),
        ("alice", "login", False, "too many failed logins"),
        ("x" * 128 + "...", "login", False, "login refused"),
        ("-", "authenticate", False, "invalid API key"),
    ]
    assert len(audits[3]["context"]["api_key_sha256_prefix"]) == 12
    assert all(a["client_ip"] == "127.0.0.1" for a in audits)


# -- 14. cookie-authenticated bodies and the Secure attribute ---------------------------------
async def test_cookie_changes_need_a_typed_body(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    server = await fusion_server(server_config(tmp_path))
    alice = http_sessions(server.url)
    assert (await login(alice, "alice"))[0] == 200
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    bare = b'{"name": "cross-site"}'
    # What a cross-site page can send with the user's cookie and no preflight.
    status, body = await call(alice, "POST", "/api/case", data=bare, headers={"Content-Type": ""})
    assert (status, body["status"]) == (415, 415), body
    status, body = await call(
        alice, "POST", "/api/case", data=bare, headers={"Content-Type": "text/plain"}
    )
    assert status == 400, body
    status, body = await call(robot, "GET", "/api/cases")
    assert body["data"] == []
    # The same body typed as JSON is a normal request; a script with an API key
    # may still send it bare.
    status, body = await call(alice, "POST", "/api/case", json={"name": "typed"})
    assert status == 200, body
    guid = body["data"]["guid"]
    status, body = await call(
        alice, "PUT", f"/api/case/{guid}", data=b'{"name": "x"}', headers={"Content-Type": ""}
    )
    assert status == 415, body
    status, body = await call(robot, "POST", "/api/case", data=bare, headers={"Content-Type": ""})
    assert status == 200, body
    # A delete carries no body: nothing to type.
    carol = http_sessions(server.url)
    assert (await login(carol, "carol"))[0] == 200
    assert (await call(carol, "DELETE", f"/api/case/{guid}"))[0] == 200


def _cookie_of(response: aiohttp.ClientResponse) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        cookie.load(header)
    return cookie


async def _login_cookie(
    server: RunningServer, http_sessions: HTTPSessionFactory, headers: dict[str, str]
) -> SimpleCookie:
    session = http_sessions(server.url)
    body = {"data": {"username": "alice", "password": "alice-password"}}
    async with session.post("/api/auth/login", json=body, headers=headers) as response:
        assert response.status == 200
        return _cookie_of(response)


@pytest.mark.parametrize(
    ("trusted", "headers", "secure"),
    [
        ([], {}, False),
        ([], {"X-Forwarded-Proto": "https"}, False),  # nobody vouches for the header
        (["127.0.0.0/8"], {"X-Forwarded-Proto": "https"}, True),
        (["127.0.0.0/8"], {"X-Forwarded-Proto": "HTTPS"}, True),
        (["127.0.0.0/8"], {"X-Forwarded-Proto": "http"}, False),
        (["127.0.0.0/8"], {"X-Forwarded-Proto": "https, http"}, False),
        (["10.0.0.0/8"], {"X-Forwarded-Proto": "https"}, False),
    ],
)
async def test_session_cookie_is_secure_over_https(
    trusted: list[str],
    headers: dict[str, str],
    secure: bool,
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    server = await fusion_server(server_config(tmp_path, server={"trusted_proxies": trusted}))
    morsel = (await _login_cookie(server, http_sessions, headers))["FUSION_SESSION"]
    assert bool(morsel["secure"]) is secure


async def test_session_cookie_is_secure_on_a_tls_listener(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    server = FusionServer(server_config(tmp_path))
    runner = web.AppRunner(server.build(), access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
    await site.start()
    try:
        client_context = ssl.create_default_context(cafile=str(files.ca_file))
        connector = aiohttp.TCPConnector(ssl=client_context)
        async with aiohttp.ClientSession(connector=connector) as session:
            body = {"data": {"username": "alice", "password": "alice-password"}}
            url = f"https://127.0.0.1:{port}/api/auth/login"
            async with session.post(url, json=body) as response:
                assert response.status == 200
                morsel = _cookie_of(response)["FUSION_SESSION"]
    finally:
        await runner.cleanup()
    assert morsel["secure"] is True
