"""Events and downloads across server processes sharing one real redis-server,
and a Redis outage under 50 live subscribers.

The replica tests start this very file as a server process (``python
test_event_replicas.py <redis url> <root> --host H --port P``, a
:class:`ServerProcess`) on the session's redis-server: an aiohttp app with
the event and download APIs on the shared Redis, plus two test routes that
call ``notify()`` and ``prepare()``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fusion_testing.fixtures_server import ServerProcess
from fusion_testing.redis import RedisServer

from fusion.concept import Case, Event, Identity
from fusion.helper.http_envelope import envelope_middleware
from fusion.helper.sse import iter_sse
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


def start_replica(redis_url: str, root: Path) -> ServerProcess:
    """This file as a server process (see the module docstring), listening once started."""
    pythonpath = [str(REPO / "tools" / "testing"), os.environ.get("PYTHONPATH", "")]
    return ServerProcess(
        command=[sys.executable, __file__, redis_url, str(root)],
        cwd=REPO,
        env={"PYTHONPATH": os.pathsep.join(filter(None, pythonpath))},
    ).start()


@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess, Path]]:
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    root = tmp_path_factory.mktemp("root")
    started: list[ServerProcess] = []
    try:
        started.append(start_replica(redis_server.url, root))
        started.append(start_replica(redis_server.url, root))
        yield started[0], started[1], root
    finally:
        codes = [process.stop() for process in started]
    for process, code in zip(started, codes, strict=True):
        output = process.output.decode(errors="replace")
        assert code == 0, output[-2000:]
        assert "Traceback" not in output, output[-4000:]


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
    async with asyncio.timeout(30):
        while True:
            sse = await anext(events)
            event = Event.from_json(sse.data)
            if event.category == category:
                return event


async def test_subscribe_on_one_replica_notify_on_the_other(
    replicas: tuple[ServerProcess, ServerProcess, Path], session: aiohttp.ClientSession
) -> None:
    first, second, _root = replicas
    response, events = await _events(session, first.url, "alice")
    hello = await _next_event(events, "subscribers")
    assert hello.ext == {"usernames": ["alice"]}
    # Her "subscribe" announcement follows her watcher snapshot into the store
    # (both after the hello): once it is heard, the other replica can read her.
    joined = await _next_event(events, "subscribe")
    assert joined.ext == {"username": "alice"}
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
    replicas: tuple[ServerProcess, ServerProcess, Path], session: aiohttp.ClientSession
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
    parser = argparse.ArgumentParser()
    parser.add_argument("redis_url")
    parser.add_argument("root", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        build_app(args.redis_url, args.root),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
    )
