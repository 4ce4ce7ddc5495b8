"""A ``fusion-server serve`` process while its redis-server dies, freezes or is not there yet.

Beyond tests/server/test_audit_and_outage.py (one outage of an in-process
server): every route with a session and with an API key, answered within a
bound, in a real server process, through two outages; a Redis that hangs
(SIGSTOP: connections accepted, nothing answered) instead of vanishing, and
no reply read by the wrong request once it thaws; a server started while
Redis is down. Recovery never needs a server restart.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    ServerProcess,
    call,
    login,
    server_config_dict,
    write_config,
)
from fusion_testing.redis import RedisServer

from fusion.concept import Event
from fusion.helper.sse import iter_sse

pytestmark = pytest.mark.redis

COOKIE = "FUSION_SESSION"
UNAVAILABLE = {"status": 503, "message": "shared store unavailable"}
# redis-py's connect timeout (1 s) and socket timeout (2 s) in the store, plus slack.
BOUND = 5.0


def _server(tmp_path: Path, redis: RedisServer, **sections: Any) -> ServerProcess:
    (tmp_path / "constant.yml").write_text("banner: outage drill\n")
    config = server_config_dict(tmp_path, shared_store={"url": redis.url}, **sections)
    path = write_config(tmp_path / "server.yml", config)
    # Logs to a file: ServerProcess reads its pipe only at stop(), and a pipe
    # filled by audit lines (64 KiB, a few hundred requests) blocks the server.
    return ServerProcess(
        ["--config", str(path)], cwd=tmp_path, env={"FUSION_LOG_FILE": str(_log(tmp_path))}
    )


def _log(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


def _assert_clean_exit(process: ServerProcess, code: int, tmp_path: Path) -> None:
    log = _log(tmp_path).read_text(errors="replace")
    assert code == 0, (process.output.decode(errors="replace")[-2000:], log[-2000:])
    assert "Traceback" not in log, log[-4000:]
    assert b"Traceback" not in process.output, process.output.decode(errors="replace")


@pytest.fixture
def server(tmp_path: Path, private_redis_server: RedisServer) -> Iterator[ServerProcess]:
    process = _server(tmp_path, private_redis_server).start()
    try:
        yield process
    finally:
        code = process.stop()
    _assert_clean_exit(process, code, tmp_path)


async def _timed(
    session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, Any, float]:
    started = time.monotonic()
    status, envelope = await call(session, method, path, **kwargs)
    return status, envelope, time.monotonic() - started


async def _session_id(session: aiohttp.ClientSession, username: str) -> str:
    async with session.post(
        "/api/auth/login",
        json={"data": {"username": username, "password": f"{username}-password"}},
    ) as response:
        assert response.status == 200, await response.text()
        morsel = response.cookies.get(COOKIE)
    assert morsel is not None
    return morsel.value


Route = tuple[str, str, aiohttp.ClientSession, dict[str, Any]]


async def _routes(
    sessions: HTTPSessionFactory, url: str, session_id: str, case_guid: str
) -> tuple[list[Route], list[Route]]:
    """(method, path, session, kwargs): routes that need the store, and those that don't."""
    user = sessions(url, cookies={COOKIE: session_id})
    robot = sessions(url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    anonymous = sessions(url)
    case = f"/api/case/{case_guid}"
    needs_store: list[Route] = [
        ("GET", "/api/auth/is_logged", user, {}),
        ("GET", "/api/auth/identities", user, {}),
        ("GET", "/api/cases", user, {}),
        ("POST", "/api/case", user, {"json": {"name": "during outage"}}),
        ("GET", case, user, {}),
        ("PUT", case, user, {"json": {"description": "during outage"}}),
        ("DELETE", case, user, {}),
        ("GET", "/api/auth/logout", user, {}),
        (
            "POST",
            "/api/auth/login",
            anonymous,
            {"json": {"data": {"username": "bob", "password": "bob-password"}}},
        ),
    ]
    without_store: list[Route] = [
        ("GET", "/api/info", anonymous, {}),
        ("GET", "/api/constant", anonymous, {}),
        ("GET", "/api/auth/config", anonymous, {}),
        ("GET", "/api/auth/is_logged", robot, {}),
        ("GET", "/api/auth/identities", robot, {}),
        ("GET", "/api/cases", robot, {}),
        ("GET", case, robot, {}),
        ("PUT", case, robot, {"json": {"description": "by the robot"}}),
    ]
    return needs_store, without_store


async def _assert_outage_answers(
    needs_store: list[Route],
    without_store: list[Route],
    without_store_bound: float,
) -> None:
    # All at once: a pool stuck on the dead Redis would make them queue.
    answers = await asyncio.gather(
        *(_timed(session, method, path, **kwargs) for method, path, session, kwargs in needs_store)
    )
    for (method, path, _, _), (status, envelope, elapsed) in zip(needs_store, answers, strict=True):
        assert (method, path, status, envelope) == (method, path, 503, UNAVAILABLE)
        assert elapsed < BOUND, (method, path, elapsed)
    for method, path, session, kwargs in without_store:
        status, envelope, elapsed = await _timed(session, method, path, **kwargs)
        assert (method, path, status) == (method, path, 200), envelope
        assert elapsed < without_store_bound, (method, path, elapsed)


async def test_every_route_through_two_outages(
    server: ServerProcess,
    private_redis_server: RedisServer,
    http_sessions: HTTPSessionFactory,
) -> None:
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(robot, "POST", "/api/case", json={"name": "kept"})
    case_guid = envelope["data"]["guid"]
    for cycle in range(2):
        session_id = await _session_id(http_sessions(server.url), "carol")
        needs_store, without_store = await _routes(http_sessions, server.url, session_id, case_guid)
        private_redis_server.kill()
        await _assert_outage_answers(needs_store, without_store, without_store_bound=1.0)
        # Nothing was changed by the refused requests.
        status, envelope = await call(robot, "GET", "/api/cases")
        assert [case["guid"] for case in envelope["data"]] == [case_guid], cycle
        assert envelope["data"][0]["description"] == "by the robot"

        private_redis_server.start()
        # Back by itself: the very first request after the restart is served.
        user = http_sessions(server.url, cookies={COOKIE: session_id})
        status, envelope = await call(user, "GET", "/api/auth/is_logged")
        # The session was in the Redis that died (no persistence): gone, not an error.
        assert (status, envelope["status"]) == (401, 401), cycle
        fresh = http_sessions(server.url)
        assert (await login(fresh, "carol"))[0] == 200
        status, envelope = await call(fresh, "GET", f"/api/case/{case_guid}")
        assert (status, envelope["data"]["name"]) == (200, "kept")


def _redis_pid(redis: RedisServer) -> int:
    info = redis.command("INFO", "server").decode()
    found = re.search(r"^process_id:(\d+)", info, re.MULTILINE)
    assert found is not None, info
    return int(found.group(1))


async def test_a_frozen_redis_is_503_in_bounded_time_and_thaws_cleanly(
    server: ServerProcess,
    private_redis_server: RedisServer,
    http_sessions: HTTPSessionFactory,
) -> None:
    """SIGSTOP: connections are accepted and never answered, the worst kind of outage."""
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(robot, "POST", "/api/case", json={"name": "frozen"})
    case_guid = envelope["data"]["guid"]
    users = {name: http_sessions(server.url) for name in ("alice", "bob", "carol")}
    for name, session in users.items():
        assert (await login(session, name))[0] == 200
    session_id = await _session_id(http_sessions(server.url), "carol")
    needs_store, without_store = await _routes(http_sessions, server.url, session_id, case_guid)
    pid = _redis_pid(private_redis_server)
    os.kill(pid, signal.SIGSTOP)
    try:
        await _assert_outage_answers(needs_store, without_store, without_store_bound=BOUND)
    finally:
        os.kill(pid, signal.SIGCONT)
    # Redis kept its data: the sessions are still there, and each request reads
    # its own reply, not one a timed-out request left on a pooled connection.
    for _ in range(3):
        answers = await asyncio.gather(
            *(call(session, "GET", "/api/auth/is_logged") for session in users.values())
        )
        assert [(status, envelope["data"]["username"]) for status, envelope in answers] == [
            (200, name) for name in users
        ]
    user = http_sessions(server.url, cookies={COOKIE: session_id})
    status, envelope = await call(user, "GET", f"/api/case/{case_guid}")
    assert (status, envelope["data"]["name"]) == (200, "frozen")


async def test_a_server_started_while_redis_is_down_serves_once_it_is_up(
    tmp_path: Path, private_redis_server: RedisServer, http_sessions: HTTPSessionFactory
) -> None:
    private_redis_server.kill()
    process = _server(tmp_path, private_redis_server).start()
    try:
        session = http_sessions(process.url)
        assert (await call(session, "GET", "/api/info"))[0] == 200
        status, envelope, elapsed = await _timed(
            session,
            "POST",
            "/api/auth/login",
            json={"data": {"username": "alice", "password": "alice-password"}},
        )
        assert (status, envelope, elapsed < BOUND) == (503, UNAVAILABLE, True)
        robot = http_sessions(process.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
        assert (await call(robot, "POST", "/api/case", json={"name": "early"}))[0] == 200

        private_redis_server.start()
        assert (await login(session, "alice"))[0] == 200
        status, envelope = await call(session, "GET", "/api/cases")
        assert (status, [case["name"] for case in envelope["data"]]) == (200, ["early"])
    finally:
        code = process.stop()
    _assert_clean_exit(process, code, tmp_path)


async def test_redis_dying_under_load_gives_only_200_401_or_503(
    server: ServerProcess,
    private_redis_server: RedisServer,
    http_sessions: HTTPSessionFactory,
) -> None:
    """Requests in flight when Redis dies and when it comes back: no 500, no hang."""
    session_id = await _session_id(http_sessions(server.url), "alice")
    user = http_sessions(server.url, cookies={COOKIE: session_id})
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    statuses: dict[str, set[int]] = {"session": set(), "key": set()}
    stop = asyncio.Event()

    async def hammer(kind: str, session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            # A request the server never answers fails here, not after aiohttp's 5 minutes.
            async with asyncio.timeout(BOUND * 2):
                status, envelope, elapsed = await _timed(session, "GET", "/api/cases")
            statuses[kind].add(status)
            assert status in (200, 401, 503), envelope
            assert envelope["status"] == status
            assert elapsed < BOUND, elapsed

    workers = [
        asyncio.create_task(hammer(kind, session))
        for kind, session in (("session", user), ("key", robot))
        for _ in range(8)
    ]
    try:
        await asyncio.sleep(0.3)
        private_redis_server.kill()
        await asyncio.sleep(0.5)
        private_redis_server.start()
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    # The session was lost with Redis (no persistence); the key never depended on it.
    assert statuses == {"session": {200, 503, 401}, "key": {200}}


async def test_events_through_an_outage(
    tmp_path: Path, private_redis_server: RedisServer, http_sessions: HTTPSessionFactory
) -> None:
    """With the event API: a subscription is 503 at once while Redis is away, case
    changes by API key are still stored (their events dropped), and streams work
    again once Redis is back."""
    process = _server(tmp_path, private_redis_server, event={"source": "outage"}).start()
    try:
        robot = http_sessions(process.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
        status, envelope = await call(robot, "POST", "/api/case", json={"acs": ["robots"]})
        guid = envelope["data"]["guid"]
        private_redis_server.kill()
        status, envelope, elapsed = await _timed(robot, "GET", f"/api/events/case/{guid}")
        assert (status, envelope, elapsed < BOUND) == (503, UNAVAILABLE, True)
        status, envelope = await call(robot, "PUT", f"/api/case/{guid}", json={"name": "kept"})
        assert (status, envelope["data"]["name"]) == (200, "kept")

        private_redis_server.start()
        response = await robot.get(f"/api/events/case/{guid}")
        try:
            assert response.status == 200
            events = iter_sse(response.content)
            status, _ = await call(robot, "PUT", f"/api/case/{guid}", json={"name": "seen"})
            assert status == 200
            async with asyncio.timeout(BOUND):
                while True:
                    event = Event.from_json((await anext(events)).data)
                    if event.category == "update_case":
                        break
            assert event.case.name == "seen"
        finally:
            response.close()
    finally:
        code = process.stop()
    _assert_clean_exit(process, code, tmp_path)
