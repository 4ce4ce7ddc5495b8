"""The event API inside a real FusionServer: real auth (sessions, API keys), real storage,
case routes emitting events, on memory:// and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
    call,
    login,
    server_config,
)

from fusion.concept import Event
from fusion.helper.aiohttp import iter_sse
from fusion.server.app import FusionServer
from fusion.server.appkeys import EVENTS
from fusion.server.config import FusionServerConfig
from fusion.server.event import FusionEventAPI, FusionEventConfig


class EventServer(FusionServer):
    """The builder plus the event API (with its default authorizer)."""

    def setup_routes(self, app: web.Application) -> None:
        if EVENTS not in app:
            FusionEventAPI(FusionEventConfig(source="fusion-test")).setup(app)


@pytest.fixture
async def running(fusion_server: ServerFactory, tmp_path: Path, store_url: str) -> RunningServer:
    config: FusionServerConfig = server_config(tmp_path, shared_store={"url": store_url})
    return await fusion_server(EventServer(config))


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


async def test_case_routes_emit_events_to_watchers(
    running: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    alice = http_sessions(running.url)
    assert (await login(alice, "alice"))[0] == 200
    status, body = await call(
        alice, "POST", "/api/case", json={"name": "c", "acs": ["alice", "robots"]}
    )
    assert status == 200
    guid = body["data"]["guid"]
    response, events = await _stream(alice, guid)
    hello = await _next(events, "subscribers")
    assert hello.ext == {"usernames": ["alice"]}
    assert hello.source == "fusion-test"

    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, _ = await call(
        robot,
        "PUT",
        f"/api/case/{guid}",
        json={"description": "by the robot", "acs": ["alice", "robot"]},
    )
    assert status == 200
    updated = await _next(events, "update_case")
    assert updated.case.description == "by the robot"
    status, _ = await call(robot, "DELETE", f"/api/case/{guid}")
    assert status == 200
    deleted = await _next(events, "delete_case")
    assert str(deleted.case.guid) == guid
    response.close()


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
    ]
    for session, path, expected in cases:
        status, body = await call(session, "GET", path)
        assert status == expected, (path, body)
        assert body["status"] == expected
        assert body["message"]
