"""Security of the event streams, over real sockets in a real FusionServer (real auth,
sessions and storage), on memory:// and a real redis-server:

- a stream stops, with no further data, once its caller loses read access to the
  case, logs out (on this replica or another one), or its session otherwise ends;
- streams are bounded: a subscriber's queue in bytes, a write to a client that
  does not read in time, the streams of one identity and of one process (429);
- a client that vanishes from a slow stream costs one DEBUG line, no traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    RunningServer,
    ServerFactory,
    ServerProcess,
    call,
    login,
    server_config,
    server_config_dict,
    write_config,
)
from fusion_testing.oidc_issuer import OIDCIssuer

from fusion.concept import Case, Event
from fusion.helper.notifier import case_channel
from fusion.helper.sse import iter_sse
from fusion.server.app import FusionServer
from fusion.server.event import FusionEventAPI

COOKIE = "FUSION_SESSION"
TIMEOUT = 10.0


async def _start(
    fusion_server: ServerFactory, tmp_path: Path, store_url: str, **event: Any
) -> tuple[RunningServer, FusionEventAPI]:
    config = server_config(
        tmp_path, shared_store={"url": store_url}, event={"source": "security", **event}
    )
    running = await fusion_server(config)
    assert isinstance(running.server, FusionServer)
    api = running.server.event_api
    assert isinstance(api, FusionEventAPI)
    return running, api


async def _wait(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(int(TIMEOUT * 100)):  # TIMEOUT seconds at least
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


class Stream:
    """One SSE stream read with the protocol's parser."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events = iter_sse(response.content)

    async def until(self, category: str) -> Event[Any]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                event = Event.from_json((await anext(self.events)).data)
                if event.category == category:
                    return event

    async def rest(self) -> list[Event[Any]]:
        """Every event until the server ends the stream (fails if it does not)."""
        received = []
        async with asyncio.timeout(TIMEOUT):
            async for sse in self.events:
                if sse.data:
                    received.append(Event.from_json(sse.data))
        # A clean end of stream: the chunked terminator, not a reset.
        assert self.response.content.at_eof()
        return received

    def close(self) -> None:
        self.response.close()


async def _open(session: aiohttp.ClientSession, guid: str) -> Stream:
    response = await session.get(f"/api/events/case/{guid}")
    assert response.status == 200, await response.text()
    stream = Stream(response)
    await stream.until("subscribers")
    return stream


async def _case(session: aiohttp.ClientSession, **fields: Any) -> str:
    status, body = await call(session, "POST", "/api/case", json={"name": "c", **fields})
    assert status == 200, body
    guid: str = body["data"]["guid"]
    return guid


# -- finding 2: streams outlive the right to read ------------------------------------------


async def test_losing_read_access_ends_the_stream_before_the_case_is_sent(
    fusion_server: ServerFactory, tmp_path: Path, store_url: str, http_sessions: HTTPSessionFactory
) -> None:
    running, _api = await _start(fusion_server, tmp_path, store_url)
    alice, bob = http_sessions(running.url), http_sessions(running.url)
    await login(alice, "alice")
    await login(bob, "bob")
    guid = await _case(alice, acs=["alice", "bob"])
    watching = await _open(alice, guid)
    removed = await _open(bob, guid)

    status, _ = await call(
        alice, "PUT", f"/api/case/{guid}", json={"acs": ["alice"], "description": "secret plans"}
    )
    assert status == 200
    # Bob's stream ends cleanly, and the case he may no longer read never reaches him.
    after = await removed.rest()
    assert all(event.category != "update_case" for event in after), after
    assert all(event.case.description != "secret plans" for event in after), after
    assert (await call(bob, "GET", f"/api/case/{guid}"))[0] in (403, 404)
    # Alice, who still may read, hears the change and keeps her stream.
    updated = await watching.until("update_case")
    assert updated.case.description == "secret plans"
    status, _ = await call(alice, "PUT", f"/api/case/{guid}", json={"description": "more"})
    assert (await watching.until("update_case")).case.description == "more"
    watching.close()


async def test_a_deleted_case_is_announced_then_its_stream_ends(
    fusion_server: ServerFactory, tmp_path: Path, store_url: str, http_sessions: HTTPSessionFactory
) -> None:
    running, _api = await _start(fusion_server, tmp_path, store_url)
    carol = http_sessions(running.url)
    await login(carol, "carol")
    guid = await _case(carol)
    stream = await _open(carol, guid)
    assert (await call(carol, "DELETE", f"/api/case/{guid}"))[0] == 200
    after = await stream.rest()
    presence = {"subscribe", "unsubscribe"}
    assert [event.category for event in after if event.category not in presence] == ["delete_case"]


async def test_logout_ends_the_session_streams_at_once(
    fusion_server: ServerFactory, tmp_path: Path, store_url: str, http_sessions: HTTPSessionFactory
) -> None:
    # The periodic check is far away: only the logout announcement can end the stream.
    running, api = await _start(fusion_server, tmp_path, store_url, session_check_interval=3600)
    alice, bob = http_sessions(running.url), http_sessions(running.url)
    await login(alice, "alice")
    await login(bob, "bob")
    guid = await _case(alice, acs=["alice", "bob"])
    watching = await _open(alice, guid)
    leaving = await _open(bob, guid)
    assert (await call(bob, "GET", "/api/auth/logout"))[0] == 200
    after = await leaving.rest()
    assert all(event.category != "update_case" for event in after)
    await _wait(lambda: api.open_streams == 1, "bob's stream still open")
    # Alice's session is not Bob's: her stream keeps delivering.
    await call(alice, "PUT", f"/api/case/{guid}", json={"description": "after logout"})
    assert (await watching.until("update_case")).case.description == "after logout"
    watching.close()


async def test_a_session_ended_without_logout_ends_its_streams(
    fusion_server: ServerFactory, tmp_path: Path, store_url: str, http_sessions: HTTPSessionFactory
) -> None:
    running, api = await _start(fusion_server, tmp_path, store_url, session_check_interval=0.2)
    bob = http_sessions(running.url)
    await login(bob, "bob")
    guid = await _case(bob)
    stream = await _open(bob, guid)
    # A new login from the same browser replaces (deletes) the session the stream
    # was opened with; nothing announces it: the periodic check must find it.
    await login(bob, "bob")
    await stream.rest()
    await _wait(lambda: api.open_streams == 0, "the old session's stream still open")
    # The new session streams as before.
    fresh = await _open(bob, guid)
    assert api.open_streams == 1
    fresh.close()


@pytest.fixture
def replicas(redis_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    config = server_config_dict(
        tmp_path,
        shared_store={"url": redis_url},
        event={"source": "replicas", "session_check_interval": 3600},
    )
    path = write_config(tmp_path / "server.yml", config)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first, second = (
        ServerProcess(["--config", str(path)], cwd=tmp_path, env={"FUSION_LOG_FILE": str(log)})
        for log in logs
    )
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        codes = (first.stop(), second.stop())
    assert codes == (0, 0), (first.output[-2000:], second.output[-2000:])
    for process, log in zip((first, second), logs, strict=True):
        assert b"Traceback" not in process.output, process.output.decode(errors="replace")
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-4000:]


@pytest.mark.redis
async def test_logout_on_the_other_replica_ends_the_stream(
    replicas: tuple[ServerProcess, ServerProcess], http_sessions: HTTPSessionFactory
) -> None:
    first, second = replicas
    bob = http_sessions(first.url)
    async with bob.post(
        "/api/auth/login", json={"data": {"username": "bob", "password": "bob-password"}}
    ) as answer:
        assert answer.status == 200
        session_id = answer.cookies[COOKIE].value
    guid = await _case(bob)
    stream = await _open(bob, guid)
    elsewhere = http_sessions(second.url, cookies={COOKIE: session_id})
    assert (await call(elsewhere, "GET", "/api/auth/logout"))[0] == 200
    # Ended by the announcement (the periodic check runs once an hour here).
    await stream.rest()
    assert (await call(bob, "GET", f"/api/events/case/{guid}"))[0] == 401


# -- finding 4: streams have no limits ----------------------------------------------------


async def test_streams_per_identity_and_per_process_are_capped(
    fusion_server: ServerFactory, tmp_path: Path, store_url: str, http_sessions: HTTPSessionFactory
) -> None:
    running, api = await _start(
        fusion_server,
        tmp_path,
        store_url,
        max_streams_per_identity=2,
        max_streams=3,
        keepalive=0.2,  # how the server notices a client gone from an idle stream
    )
    bob, alice, carol = (http_sessions(running.url) for _ in range(3))
    for session, username in ((bob, "bob"), (alice, "alice"), (carol, "carol")):
        await login(session, username)
    guid = await _case(bob)
    first, second = await _open(bob, guid), await _open(bob, guid)
    status, body = await call(bob, "GET", f"/api/events/case/{guid}")
    assert (status, body["status"]) == (429, 429)
    assert "bob" in body["message"]
    # Another identity still gets a stream, up to the process's cap.
    third = await _open(alice, guid)
    status, body = await call(carol, "GET", f"/api/events/case/{guid}")
    assert (status, body["status"]) == (429, 429)
    assert "server" in body["message"]
    # A stream that ends gives its place back.
    first.close()
    await _wait(lambda: api.open_streams == 2, "the closed stream is still counted")
    again = await _open(carol, guid)
    for stream in (second, third, again):
        stream.close()


class SilentClient:
    """A raw HTTP client with a tiny receive buffer that reads nothing until told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, guid: str) -> SilentClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            f"GET /api/events/case/{guid} HTTP/1.1\r\nHost: x\r\n"
            f"X-Fusion-API-Token: {ROBOT_KEY}\r\n\r\n".encode()
        )
        await writer.drain()
        return cls(reader, writer)

    async def read_to_the_end(self) -> bytes:
        data = b""
        async with asyncio.timeout(TIMEOUT):
            while not data.endswith(b"0\r\n\r\n"):
                chunk = await self.reader.read(1 << 20)
                assert chunk, "connection closed before the end of the stream"
                data += chunk
        return data

    def close(self) -> None:
        self.writer.transport.abort()


async def _flood_until(
    api: FusionEventAPI, case: Case, done: Callable[[], bool], size: int = 100_000
) -> int:
    """Publish events of ``size`` bytes until ``done()``; returns how many were sent."""
    padding = "x" * size
    async with asyncio.timeout(30):
        for index in range(2000):
            if done():
                return index
            await api.notify("bulk", case, {"index": index, "padding": padding})
            await asyncio.sleep(0.005)
    raise AssertionError("condition not met")


async def _robot_case(running: RunningServer, http_sessions: HTTPSessionFactory) -> Case:
    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, body = await call(robot, "POST", "/api/case", json={"name": "flooded"})
    assert status == 200
    case: Case = Case.from_dict(body["data"])
    return case


async def test_a_subscriber_over_its_bytes_is_dropped_and_its_queue_freed(
    fusion_server: ServerFactory, tmp_path: Path, store_url: str, http_sessions: HTTPSessionFactory
) -> None:
    # 1,024 events may wait, but not more than 512 KB of them.
    running, api = await _start(
        fusion_server, tmp_path, store_url, queue_bytes=512 * 1024, keepalive=60, history=2
    )
    case = await _robot_case(running, http_sessions)
    channel = case_channel(case.guid)
    slow = await SilentClient.open(running.port, str(case.guid))
    await _wait(lambda: api.pubsub.subscriber_count(channel) == 1, "the stream did not start")
    sent = await _flood_until(api, case, lambda: api.pubsub.subscriber_count(channel) == 0)
    # Dropped long before its 1,024 events, and told so with a clean end of stream.
    data = await slow.read_to_the_end()
    assert 0 < data.count(b'"category":"bulk"') < sent
    await _wait(lambda: api.open_streams == 0, "the dropped stream is still open")
    slow.close()


async def test_a_client_that_never_reads_is_cut_off(
    fusion_server: ServerFactory, tmp_path: Path, store_url: str, http_sessions: HTTPSessionFactory
) -> None:
    running, api = await _start(
        fusion_server, tmp_path, store_url, send_timeout=0.5, keepalive=60, history=2
    )
    case = await _robot_case(running, http_sessions)
    slow = await SilentClient.open(running.port, str(case.guid))
    await _wait(lambda: api.open_streams == 1, "the stream did not start")
    # Its write blocks; after send_timeout the connection is closed and the stream gone.
    await _flood_until(api, case, lambda: api.open_streams == 0)
    slow.close()


# -- finding 9 (part): a vanished client is one DEBUG line -----------------------------------


async def test_a_client_gone_from_a_slow_stream_is_one_debug_line(
    fusion_server: ServerFactory,
    tmp_path: Path,
    store_url: str,
    http_sessions: HTTPSessionFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    running, api = await _start(
        fusion_server, tmp_path, store_url, queue_size=4, keepalive=60, history=2
    )
    case = await _robot_case(running, http_sessions)
    channel = case_channel(case.guid)
    slow = await SilentClient.open(running.port, str(case.guid))
    await _wait(lambda: api.pubsub.subscriber_count(channel) == 1, "the stream did not start")
    # Dropped: its queue filled up, so the server is stuck writing to it.
    await _flood_until(api, case, lambda: api.pubsub.subscriber_count(channel) == 0)
    caplog.clear()
    slow.close()  # a reset, with the server's write pending
    await _wait(lambda: api.open_streams == 0, "the stream of the gone client is still open")
    await asyncio.sleep(0)
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert not tracebacks, [record.getMessage() for record in tracebacks]
    gone = [record for record in caplog.records if "client gone" in record.getMessage()]
    assert len(gone) == 1, [record.getMessage() for record in caplog.records]
    assert gone[0].levelno == logging.DEBUG
    assert "\n" not in gone[0].getMessage()


async def test_a_bearer_stream_ends_when_its_token_expires(
    fusion_server: ServerFactory,
    tmp_path: Path,
    http_sessions: HTTPSessionFactory,
    oidc_issuer: OIDCIssuer,
) -> None:
    backend = {
        "type": "oidc",
        "issuer": oidc_issuer.issuer,
        "client_id": oidc_issuer.client_id,
        "client_secret": oidc_issuer.client_secret,
        "redirect_uri": oidc_issuer.redirect_uri,
        "leeway": 0,
    }
    config = server_config(
        tmp_path,
        auth={"backend": backend},
        event={"source": "security", "session_check_interval": 0.2},
    )
    running = await fusion_server(config)
    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    guid = await _case(robot)
    # Lifetimes tried from short to long: a machine too slow to open the stream
    # before the first expires tries the next one (the token must be valid at open).
    for lifetime in (3, 10, 30, 120):
        expires = int(time.time()) + lifetime
        token = oidc_issuer.mint(oidc_issuer.claims("robot-user", exp=expires))
        session = http_sessions(running.url, headers={"Authorization": f"Bearer {token}"})
        response = await session.get(f"/api/events/case/{guid}")
        if response.status == 200:
            break
        assert response.status == 401, await response.text()
        response.close()
    else:
        raise AssertionError("no token stayed valid long enough to open a stream")
    stream = Stream(response)
    await stream.until("subscribers")
    async with asyncio.timeout(lifetime + TIMEOUT):
        async for _ in stream.events:
            pass  # presence events, keepalives: until the server ends the stream
    assert stream.response.content.at_eof()
    # It ended because the token expired, not before.
    assert time.time() >= expires
    status, _ = await call(session, "GET", f"/api/case/{guid}")
    assert status == 401
