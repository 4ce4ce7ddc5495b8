"""Two ``fusion-server serve`` processes sharing one real redis-server and one SQLite file.

What a load balancer in front of two replicas needs: a session made on one
works on the other, logout on one revokes it on both, failed logins count
across both, and a case written by one is read, changed and deleted through
the other.

A download prepared on one replica and fetched from the other is tested in
tests/server/test_event_replicas.py
(``test_prepare_on_one_replica_download_from_the_other``): no route of
``fusion-server serve`` prepares a download (``FusionDownloadAPI.prepare`` is
for a service's own handlers), so those replicas are processes of an app with
a route that does, on one real redis-server and one download root; the key
fetched from the second is then refused by the first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from fusion_testing.fixtures_server import (
    FEDERATION_KEY,
    ROBOT_KEY,
    HTTPSessionFactory,
    ServerProcess,
    call,
    server_config_dict,
    write_config,
)
from fusion_testing.redis import RedisServer

from fusion.concept import Event
from fusion.helper.sse import iter_sse
from fusion.server.config import FusionServerConfig

pytestmark = pytest.mark.redis

WINDOW = 60
PER_USERNAME = 3
PER_IP = 6
COOKIE = "FUSION_SESSION"
CONFIG_FIELDS = frozenset(FusionServerConfig.__struct_fields__)


class Replicas:
    """Two server processes on one Redis and one data directory."""

    def __init__(self, first: ServerProcess, second: ServerProcess, redis: RedisServer) -> None:
        self.first = first
        self.second = second
        self.redis = redis

    @property
    def both(self) -> tuple[ServerProcess, ServerProcess]:
        return self.first, self.second


@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    data_dir = tmp_path_factory.mktemp("shared-data")
    # The event API, where the server configuration has its section.
    events = {"event": {"source": "replicas"}} if "event" in CONFIG_FIELDS else {}
    config = server_config_dict(
        data_dir,
        **events,
        shared_store={"url": redis_server.url},
        auth={
            "throttle": {
                "window": WINDOW,
                "max_failures_per_username": PER_USERNAME,
                "max_failures_per_ip": PER_IP,
            }
        },
    )
    path = write_config(data_dir / "server.yml", config)
    # Logs to files: ServerProcess reads its pipe only at stop(), and a pipe
    # filled by audit lines (64 KiB, a few hundred requests) blocks the server.
    logs = [data_dir / "first.log", data_dir / "second.log"]
    first, second = (
        ServerProcess(["--config", str(path)], cwd=data_dir, env={"FUSION_LOG_FILE": str(log)})
        for log in logs
    )
    try:
        first.start()
        second.start()
        yield Replicas(first, second, redis_server)
    finally:
        codes = (first.stop(), second.stop())
    assert codes == (0, 0), (first.output[-2000:], second.output[-2000:])
    for process in (first, second):
        assert b"Traceback" not in process.output, process.output.decode(errors="replace")
    for log in logs:
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-4000:]


@pytest.fixture
def fresh(replicas: Replicas) -> Replicas:
    """The replicas with an empty Redis: no session, no failure counter left by another test."""
    if not replicas.redis.running:
        replicas.redis.start()
    replicas.redis.flushall()
    return replicas


def _session_id(response_cookies: Any) -> str:
    morsel = response_cookies.get(COOKIE)
    assert morsel is not None, response_cookies
    assert morsel.value, response_cookies
    value: str = morsel.value
    return value


async def _login_for_id(session: aiohttp.ClientSession, username: str) -> str:
    async with session.post(
        "/api/auth/login",
        json={"data": {"username": username, "password": f"{username}-password"}},
    ) as response:
        assert response.status == 200, await response.text()
        return _session_id(response.cookies)


async def test_a_session_made_on_one_works_on_the_other(
    fresh: Replicas, http_sessions: HTTPSessionFactory
) -> None:
    session_id = await _login_for_id(http_sessions(fresh.first.url), "alice")
    for process in fresh.both:
        holder = http_sessions(process.url, cookies={COOKIE: session_id})
        status, envelope = await call(holder, "GET", "/api/auth/is_logged")
        assert (status, envelope["data"]) == (200, {"username": "alice", "groups": ["analysts"]})
    # Identities seen by one are listed by the other (the shared SQLite file).
    robot = http_sessions(fresh.second.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(robot, "GET", "/api/auth/identities")
    assert {"username": "alice", "groups": ["analysts"]} in envelope["data"]
    # A case created through the session on the second is alice's on the first.
    on_second = http_sessions(fresh.second.url, cookies={COOKIE: session_id})
    status, envelope = await call(on_second, "POST", "/api/case", json={"acs": ["alice"]})
    assert status == 200, envelope
    on_first = http_sessions(fresh.first.url, cookies={COOKIE: session_id})
    status, envelope = await call(on_first, "GET", f"/api/case/{envelope['data']['guid']}")
    assert (status, envelope["data"]["acs"]) == (200, ["alice"])


async def test_logout_on_one_revokes_on_both(
    fresh: Replicas, http_sessions: HTTPSessionFactory
) -> None:
    session_id = await _login_for_id(http_sessions(fresh.second.url), "bob")
    first = http_sessions(fresh.first.url, cookies={COOKIE: session_id})
    second = http_sessions(fresh.second.url, cookies={COOKIE: session_id})
    assert (await call(second, "GET", "/api/cases"))[0] == 200
    assert (await call(first, "GET", "/api/auth/logout"))[0] == 200
    for holder in (first, second):
        # The cookie jar of `first` dropped the cookie; send it again explicitly.
        for path in ("/api/auth/is_logged", "/api/cases", "/api/auth/logout"):
            status, envelope = await call(holder, "GET", path, cookies={COOKIE: session_id})
            assert (path, status, envelope["status"]) == (path, 401, 401)


async def test_a_new_login_on_the_other_replaces_the_session_everywhere(
    fresh: Replicas, http_sessions: HTTPSessionFactory
) -> None:
    old = await _login_for_id(http_sessions(fresh.first.url), "alice")
    again = http_sessions(fresh.second.url, cookies={COOKIE: old})
    new = await _login_for_id(again, "alice")
    assert new != old
    for process in fresh.both:
        for session_id, expected in ((old, 401), (new, 200)):
            holder = http_sessions(process.url, cookies={COOKIE: session_id})
            assert (await call(holder, "GET", "/api/auth/is_logged"))[0] == expected


async def _failed_login(process: ServerProcess, username: str) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession(process.url) as session,
        session.post(
            "/api/auth/login", json={"data": {"username": username, "password": "wrong"}}
        ) as response,
    ):
        return response.status, dict(response.headers), await response.json()


async def _good_login(process: ServerProcess, username: str) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession(process.url) as session,
        session.post(
            "/api/auth/login",
            json={"data": {"username": username, "password": f"{username}-password"}},
        ) as response,
    ):
        return response.status, dict(response.headers), await response.json()


def _assert_throttled(answer: tuple[int, dict[str, str], Any]) -> None:
    status, headers, envelope = answer
    assert status == 429, envelope
    assert envelope == {"status": 429, "message": "too many failed logins: try again later"}
    assert 1 <= int(headers["Retry-After"]) <= WINDOW
    assert "Set-Cookie" not in headers


async def test_failed_logins_per_username_count_across_both(fresh: Replicas) -> None:
    first, second = fresh.both
    # Split between the two: neither alone reached the limit.
    for process in (first, second, first)[:PER_USERNAME]:
        status, _, envelope = await _failed_login(process, "alice")
        assert (status, envelope["message"]) == (400, "login refused")
    for process in (second, first):
        _assert_throttled(await _failed_login(process, "alice"))
        # Even the right password waits for the window to pass.
        _assert_throttled(await _good_login(process, "alice"))
    # Other usernames are not locked out.
    assert (await _good_login(second, "bob"))[0] == 200


async def test_failed_logins_per_address_count_across_both(fresh: Replicas) -> None:
    first, second = fresh.both
    for index in range(PER_IP):
        process = (first, second)[index % 2]
        assert (await _failed_login(process, f"nobody{index}"))[0] == 400
    for process in (first, second):
        _assert_throttled(await _good_login(process, "carol"))


async def test_a_case_written_on_one_is_read_and_changed_on_the_other(
    fresh: Replicas, http_sessions: HTTPSessionFactory
) -> None:
    first = http_sessions(fresh.first.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    second = http_sessions(fresh.second.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(
        first, "POST", "/api/case", json={"name": "shared", "acs": ["robots"]}
    )
    assert status == 200, envelope
    guid = envelope["data"]["guid"]
    # Read on the second, then again after each change made by the other one:
    # a cached copy on either side would show the old version.
    status, envelope = await call(second, "GET", f"/api/case/{guid}")
    assert (status, envelope["data"]["name"]) == (200, "shared")
    for writer, reader, name in ((second, first, "renamed"), (first, second, "again")):
        status, _ = await call(writer, "PUT", f"/api/case/{guid}", json={"name": name})
        assert status == 200
        status, envelope = await call(reader, "GET", f"/api/case/{guid}")
        assert (status, envelope["data"]["name"]) == (200, name)
        status, envelope = await call(reader, "GET", "/api/cases")
        assert name in [case["name"] for case in envelope["data"]]
    # An access change made on one is enforced by the other at once.
    hub_first = http_sessions(fresh.first.url, headers={"X-Fusion-API-Token": FEDERATION_KEY})
    hub_second = http_sessions(fresh.second.url, headers={"X-Fusion-API-Token": FEDERATION_KEY})
    session_id = await _login_for_id(http_sessions(fresh.first.url), "alice")
    alice = http_sessions(fresh.second.url, cookies={COOKIE: session_id})
    assert (await call(alice, "GET", f"/api/case/{guid}"))[0] in (403, 404)
    changes = {"acs": ["alice", "robots"]}
    assert (await call(hub_first, "PUT", f"/api/case/{guid}", json=changes))[0] == 200
    assert (await call(alice, "GET", f"/api/case/{guid}"))[0] == 200
    changes = {"acs": ["robots"]}
    assert (await call(hub_second, "PUT", f"/api/case/{guid}", json=changes))[0] == 200
    alice_first = http_sessions(fresh.first.url, cookies={COOKIE: session_id})
    for session in (alice, alice_first):
        assert (await call(session, "GET", f"/api/case/{guid}"))[0] in (403, 404)
    # Deleted on the second, gone on the first.
    assert (await call(second, "DELETE", f"/api/case/{guid}"))[0] == 200
    for session in (first, second):
        status, envelope = await call(session, "GET", f"/api/case/{guid}")
        assert (status, envelope["status"]) == (404, 404)


async def test_attach_on_one_is_seen_on_the_other(
    fresh: Replicas, http_sessions: HTTPSessionFactory
) -> None:
    hub_first = http_sessions(fresh.first.url, headers={"X-Fusion-API-Token": FEDERATION_KEY})
    hub_second = http_sessions(fresh.second.url, headers={"X-Fusion-API-Token": FEDERATION_KEY})
    status, envelope = await call(hub_first, "POST", "/api/case", json={"name": "to attach"})
    guid = envelope["data"]["guid"]
    next_guid = "0b7ad7ba-2f4c-4f0e-9a51-4f4fb3f5c0de"
    status, envelope = await call(hub_second, "PUT", f"/api/case/{guid}/attach/{next_guid}")
    assert (status, envelope["data"]["guid"]) == (200, next_guid)
    assert (await call(hub_first, "GET", f"/api/case/{guid}"))[0] == 404
    status, envelope = await call(hub_first, "GET", f"/api/case/{next_guid}")
    assert (status, envelope["data"]["name"]) == (200, "to attach")


async def test_events_subscribed_on_one_notified_from_the_other(
    fresh: Replicas, http_sessions: HTTPSessionFactory
) -> None:
    first = http_sessions(fresh.first.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    second = http_sessions(fresh.second.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(first, "POST", "/api/case", json={"acs": ["robots"]})
    guid = envelope["data"]["guid"]
    response = await first.get(f"/api/events/case/{guid}")
    try:
        if response.status == 404 and (await response.json()).get("message") == "Not Found":
            assert "event" not in CONFIG_FIELDS, "the event section is configured: no route?"
            pytest.skip(
                "fusion-server serve does not wire the event API yet (no event section in "
                "FusionServerConfig); tests/server/test_event_replicas.py covers events "
                "across replicas with an app of its own"
            )
        assert response.status == 200, await response.text()
        events = iter_sse(response.content)

        async def next_event(category: str) -> Event[Any]:
            async with asyncio.timeout(10):
                while True:
                    event = Event.from_json((await anext(events)).data)
                    if event.category == category:
                        return event

        await next_event("subscribers")
        status, _ = await call(second, "PUT", f"/api/case/{guid}", json={"name": "notified"})
        assert status == 200
        event = await next_event("update_case")
        assert event.case.name == "notified"
    finally:
        response.close()


async def test_concurrent_writes_from_both_replicas(
    fresh: Replicas, http_sessions: HTTPSessionFactory
) -> None:
    """Both processes write the one SQLite file at once: every write lands, none is a 500."""
    robots = [
        http_sessions(process.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
        for process in fresh.both
    ]
    _, envelope = await call(robots[0], "POST", "/api/case", json={"name": "contended"})
    guid = envelope["data"]["guid"]
    creates = [
        call(robots[index % 2], "POST", "/api/case", json={"name": f"new {index}"})
        for index in range(40)
    ]
    updates = [
        call(robots[index % 2], "PUT", f"/api/case/{guid}", json={"description": f"{index}"})
        for index in range(40)
    ]
    answers = await asyncio.gather(*creates, *updates)
    assert sorted({status for status, _ in answers}) == [200], [
        envelope for status, envelope in answers if status != 200
    ]
    for robot in robots:
        _, envelope = await call(robot, "GET", "/api/cases")
        # The data dir is the module's: earlier tests' cases are there too.
        expected = {"contended", *(f"new {index}" for index in range(40))}
        names = sorted(case["name"] for case in envelope["data"] if case["name"] in expected)
        assert names == sorted(expected)
        # The last write won everywhere, and it is one of the writes made.
        descriptions = {case["description"] for case in envelope["data"] if case["guid"] == guid}
        assert len(descriptions) == 1
        assert descriptions <= {str(index) for index in range(40)}
