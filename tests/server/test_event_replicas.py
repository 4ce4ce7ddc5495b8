"""Events and downloads across server processes sharing one real redis-server,
and a Redis outage under 50 live subscribers.

The replica tests start this very file as a server process (``python
test_event_replicas.py <port> <redis url> <root>``): an aiohttp app with the
event and download APIs on the shared Redis, plus two test routes that call
``notify()`` and ``prepare()``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fusion_testing.redis import RedisServer
from fusion_testing.services import free_port

from fusion.concept import Case, Event, Identity
from fusion.helper.aiohttp import envelope_middleware, iter_sse
from fusion.helper.store import create_store
from fusion.server.appkeys import EVENTS, STORE
from fusion.server.download import DOWNLOADS, FusionDownloadAPI, FusionDownloadConfig
from fusion.server.event import FusionEventAPI, FusionEventConfig

pytestmark = pytest.mark.redis

CASE = Case(guid=UUID("3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a"), name="replicated")
REPO = Path(__file__).resolve().parents[2]

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


async def _authorize(request: web.Request, case_guid: UUID) -> tuple[Identity, Case]:
    return Identity(username=request.headers.get("X-User", "anonymous")), CASE


def build_app(store_url: str, root: Path) -> web.Application:
    """The app of one replica (also used in-process by the outage test)."""
    app = web.Application(middlewares=[envelope_middleware()])
    app[STORE] = create_store(store_url)
    FusionEventAPI(FusionEventConfig(source="replica", keepalive=1.0), authorize=_authorize).setup(
        app
    )
    FusionDownloadAPI(FusionDownloadConfig(roots=[str(root)])).setup(app)

    async def notify(request: web.Request) -> web.Response:
        await request.app[EVENTS].notify("ping", CASE, {"from": request.query.get("from")})
        return web.json_response({"status": 200})

    async def prepare(request: web.Request) -> web.Response:
        key = await request.app[DOWNLOADS].prepare(root / request.query["name"], "file.txt")
        return web.json_response({"status": 200, "data": key.to_dict()})

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"status": 200})

    async def close_store(app: web.Application) -> None:
        await app[STORE].close()

    app.router.add_post("/test/notify", notify)
    app.router.add_post("/test/prepare", prepare)
    app.router.add_get("/test/ping", ping)
    app.on_cleanup.append(close_store)
    return app


class Replica:
    def __init__(self, redis_url: str, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO / "tools" / "testing"), env.get("PYTHONPATH")])
        )
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(self.port), redis_url, str(root)], cwd=REPO, env=env
        )

    def wait_ready(self) -> None:
        import urllib.request

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "replica exited"
            try:
                with urllib.request.urlopen(f"{self.url}/test/ping", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("replica did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    from fusion_testing.services import require_binary

    server = RedisServer(require_binary("redis-server", "redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def replicas(
    shared_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Replica, Replica, Path]]:
    root = tmp_path_factory.mktemp("root")
    first, second = Replica(shared_redis.url, root), Replica(shared_redis.url, root)
    try:
        first.wait_ready()
        second.wait_ready()
        yield first, second, root
    finally:
        first.stop()
        second.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _events(
    session: aiohttp.ClientSession, base: str, username: str
) -> tuple[aiohttp.ClientResponse, AsyncIterator[Any]]:
    response = await session.get(
        f"{base}/api/events/case/{CASE.guid}", headers={"X-User": username}
    )
    assert response.status == 200
    return response, iter_sse(response.content)


async def _next_event(events: AsyncIterator[Any], category: str) -> Event[Any]:
    async with asyncio.timeout(5):
        while True:
            sse = await anext(events)
            event = Event.from_json(sse.data)
            if event.category == category:
                return event


async def test_subscribe_on_one_replica_notify_on_the_other(
    replicas: tuple[Replica, Replica, Path], session: aiohttp.ClientSession
) -> None:
    first, second, _root = replicas
    response, events = await _events(session, first.url, "alice")
    hello = await _next_event(events, "subscribers")
    assert hello.ext == {"usernames": ["alice"]}
    # A watcher on the second replica sees Alice, who watches on the first.
    other, other_events = await _events(session, second.url, "bob")
    hello = await _next_event(other_events, "subscribers")
    assert hello.ext == {"usernames": ["alice", "bob"]}
    async with session.post(f"{second.url}/test/notify?from=second") as answer:
        assert answer.status == 200
    event = await _next_event(events, "ping")
    assert event.ext == {"from": "second"}
    assert event.source == "replica"
    response.close()
    other.close()


async def test_prepare_on_one_replica_download_from_the_other(
    replicas: tuple[Replica, Replica, Path], session: aiohttp.ClientSession
) -> None:
    first, second, root = replicas
    (root / "shared.txt").write_bytes(b"from the shared disk")
    async with session.post(f"{first.url}/test/prepare?name=shared.txt") as answer:
        key = (await answer.json())["data"]
    url = f"/api/download/{key['guid']}/{key['token']}"
    async with session.get(second.url + url) as response:
        assert response.status == 200
        assert await response.read() == b"from the shared disk"
    async with session.get(first.url + url) as response:
        assert response.status == 404


async def test_redis_outage_under_50_subscribers(
    aiohttp_client: ClientFactory, private_redis_server: RedisServer, tmp_path: Path
) -> None:
    client = await aiohttp_client(build_app(private_redis_server.url, tmp_path))
    streams = []
    for index in range(50):
        response = await client.get(
            f"/api/events/case/{CASE.guid}", headers={"X-User": f"user{index % 5}"}
        )
        assert response.status == 200
        events = iter_sse(response.content)
        await _next_event(events, "subscribers")
        streams.append((response, events))
    api = client.app[EVENTS]
    assert isinstance(api, FusionEventAPI)
    assert api.open_streams == 50

    private_redis_server.kill()

    async def outcome(response: aiohttp.ClientResponse, events: AsyncIterator[Any]) -> str:
        # Either the stream ends cleanly (the client will resume with Last-Event-ID)
        # or it stays open; it must never break mid-event.
        try:
            async with asyncio.timeout(3):
                async for _sse in events:
                    pass
        except TimeoutError:
            return "open"
        return "ended"

    outcomes = await asyncio.gather(*(outcome(response, events) for response, events in streams))
    assert set(outcomes) <= {"open", "ended"}
    # Routes that do not need Redis keep answering; a new subscription gets a clean 503.
    async with client.get("/test/ping") as answer:
        assert answer.status == 200
    async with client.get(f"/api/events/case/{CASE.guid}") as answer:
        assert answer.status == 503
        assert (await answer.json())["status"] == 503
    for response, _events in streams:
        response.close()

    private_redis_server.start()
    # Without a restart of the app, new subscriptions work again and hear events.
    for _ in range(100):
        answer = await client.get(f"/api/events/case/{CASE.guid}", headers={"X-User": "back"})
        if answer.status == 200:
            break
        answer.close()
        await asyncio.sleep(0.1)
    assert answer.status == 200
    events = iter_sse(answer.content)
    await _next_event(events, "subscribers")
    await client.app[EVENTS].notify("after", CASE)
    event = await _next_event(events, "after")
    assert event.case.guid == CASE.guid
    answer.close()


if __name__ == "__main__":
    web.run_app(
        build_app(sys.argv[2], Path(sys.argv[3])),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
        access_log=None,
    )
