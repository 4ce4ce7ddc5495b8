"""The event and download APIs inside a real FusionServer, assembled by the builder from
the configuration: real auth (sessions, API keys), real storage, case routes emitting
events and refusing webhooks outside the allowed prefixes, on memory:// and a real
redis-server; and the ``fusion-server`` command's embedded defaults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    RunningServer,
    ServerFactory,
    ServerProcess,
    call,
    login,
    server_config,
)

from fusion.concept import Event
from fusion.helper.sse import iter_sse
from fusion.server.app import FusionServer
from fusion.server.event import FusionEventAPI

TOKEN = "notifier-token-0123456789"


class Receiver:
    """A webhook receiver on a loopback port."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str | None, dict[str, Any]]] = []

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            body = await request.json()
            self.received.append(
                (request.path, request.headers.get("X-Fusion-Notifier-Token"), body)
            )
            return web.Response()

        app = web.Application()
        app.router.add_post("/{tail:.*}", hook)
        return app


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Awaitable[Any]]) -> tuple[Receiver, str]:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    return receiver, f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def running(
    fusion_server: ServerFactory,
    tmp_path: Path,
    store_url: str,
    receiver: tuple[Receiver, str],
) -> RunningServer:
    _, base = receiver
    config = server_config(
        tmp_path,
        shared_store={"url": store_url},
        event={
            "source": "fusion-test",
            "api_key": TOKEN,
            "webhook": f"{base}/global",
            "webhook_prefixes": [f"{base}/hooks/"],
        },
        download={"roots": [str(tmp_path)]},
    )
    started = await fusion_server(config)
    assert isinstance(started.server, FusionServer)
    assert isinstance(started.server.event_api, FusionEventAPI)
    return started


async def _stream(
    session: aiohttp.ClientSession, case_guid: str
) -> tuple[aiohttp.ClientResponse, AsyncIterator[Any]]:
    response = await session.get(f"/api/events/case/{case_guid}")
    assert response.status == 200, await response.text()
    return response, iter_sse(response.content)


async def _next(events: AsyncIterator[Any], category: str) -> Event[Any]:
    async with asyncio.timeout(5):
        while True:
            event = Event.from_json((await anext(events)).data)
            if event.category == category:
                return event


async def _wait(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


async def test_case_routes_emit_events_to_watchers_and_webhooks(
    running: RunningServer, http_sessions: HTTPSessionFactory, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    alice = http_sessions(running.url)
    assert (await login(alice, "alice"))[0] == 200
    status, body = await call(
        alice,
        "POST",
        "/api/case",
        json={"name": "c", "acs": ["alice", "robots"], "webhooks": [f"{base}/hooks/c1"]},
    )
    assert status == 200, body
    guid = body["data"]["guid"]
    response, events = await _stream(alice, guid)
    hello = await _next(events, "subscribers")
    assert hello.ext == {"usernames": ["alice"]}
    assert hello.source == "fusion-test"

    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, _ = await call(robot, "PUT", f"/api/case/{guid}", json={"description": "robot"})
    assert status == 200
    updated = await _next(events, "update_case")
    assert updated.case.description == "robot"
    status, _ = await call(robot, "DELETE", f"/api/case/{guid}")
    assert status == 200
    deleted = await _next(events, "delete_case")
    assert str(deleted.case.guid) == guid
    response.close()

    # create, update and delete reached the global webhook and the case's own.
    await _wait(lambda: len(hooks.received) >= 6)
    seen = sorted((path, body["category"]) for path, _, body in hooks.received)
    assert seen == sorted(
        (path, category)
        for path in ("/global", "/hooks/c1")
        for category in ("create_case", "update_case", "delete_case")
    )
    assert {token for _, token, _ in hooks.received} == {TOKEN}


async def test_case_webhooks_outside_the_prefixes_are_refused(
    running: RunningServer, http_sessions: HTTPSessionFactory, receiver: tuple[Receiver, str]
) -> None:
    _, base = receiver
    alice = http_sessions(running.url)
    await login(alice, "alice")
    refused = [
        "http://127.0.0.1:6379/",
        f"{base}/global",
        f"{base}/hooks",
        "http://169.254.169.254/latest/meta-data/",
    ]
    for url in refused:
        status, body = await call(alice, "POST", "/api/case", json={"name": "x", "webhooks": [url]})
        assert status == 400, url
        assert "not allowed" in body["message"]
    status, body = await call(alice, "GET", "/api/cases")
    assert body.get("data", []) == []
    status, body = await call(
        alice, "POST", "/api/case", json={"name": "ok", "webhooks": [f"{base}/hooks/a"]}
    )
    assert status == 200
    guid = body["data"]["guid"]
    status, body = await call(
        alice, "PUT", f"/api/case/{guid}", json={"webhooks": ["http://127.0.0.1:22/"]}
    )
    assert status == 400
    status, body = await call(alice, "GET", f"/api/case/{guid}")
    assert body["data"]["webhooks"] == [f"{base}/hooks/a"]


async def test_access_errors(running: RunningServer, http_sessions: HTTPSessionFactory) -> None:
    alice = http_sessions(running.url)
    await login(alice, "alice")
    status, body = await call(alice, "POST", "/api/case", json={"name": "c", "acs": ["alice"]})
    guid = body["data"]["guid"]
    anonymous = http_sessions(running.url)
    mallory = http_sessions(running.url)
    await login(mallory, "mallory")
    cases = [
        (anonymous, f"/api/events/case/{guid}", 401),
        (mallory, f"/api/events/case/{guid}", 403),
        (alice, "/api/events/case/not-a-guid", 400),
        (alice, "/api/events/case/00000000-0000-4000-8000-000000000000", 404),
        (anonymous, f"/api/download/{guid}/{'A' * 43}", 404),
    ]
    for session, path, expected in cases:
        status, body = await call(session, "GET", path)
        assert status == expected, (path, body)
        assert body["status"] == expected
        assert body["message"]


async def test_embedded_defaults_serve_events_and_downloads(
    server_process: Callable[..., ServerProcess],
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    process = server_process(
        ["--data-dir", str(tmp_path / "data")], env={"FUSION_ADMIN_PASSWORD": "s3cret-admin"}
    )
    admin = http_sessions(process.url)
    assert (await login(admin, "admin", "s3cret-admin"))[0] == 200
    status, body = await call(admin, "POST", "/api/case", json={"name": "embedded"})
    assert status == 200
    guid = body["data"]["guid"]
    response, events = await _stream(admin, guid)
    await _next(events, "subscribers")
    assert (await call(admin, "PUT", f"/api/case/{guid}", json={"name": "renamed"}))[0] == 200
    event = await _next(events, "update_case")
    assert event.case.name == "renamed"
    assert event.source == "fusion"
    response.close()
    # No webhook prefix is allowed by default: case webhooks are refused.
    status, _ = await call(
        admin, "POST", "/api/case", json={"name": "x", "webhooks": ["https://example.org/"]}
    )
    assert status == 400
    status, body = await call(admin, "GET", f"/api/download/{guid}/{'A' * 43}")
    assert (status, body["status"]) == (404, 404)
