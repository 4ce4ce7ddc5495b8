"""The builder: Expect handling, service routes and hooks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    RunningServer,
    ServerFactory,
    call,
    server_config,
)

from fusion.concept import Case, Identity
from fusion.server import AUTH, Action, FusionAuthAPI, FusionServer


async def _raw_exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read(65536)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


@pytest.fixture
async def server(tmp_path: Path, fusion_server: ServerFactory) -> RunningServer:
    return await fusion_server(server_config(tmp_path))


@pytest.mark.parametrize("value", [b"fancy-feature", b"\xe9t\xe9", b"0"])
async def test_unknown_expect_is_a_417_envelope(server: RunningServer, value: bytes) -> None:
    head, body = await _raw_exchange(
        server.port,
        b"GET /api/cases HTTP/1.1\r\nHost: x\r\nX-Fusion-API-Token: "
        + ROBOT_KEY.encode()
        + b"\r\nExpect: "
        + value
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 417 ")
    assert msgspec.json.decode(body) == {"status": 417, "message": "unsupported Expect header"}


async def test_expect_100_continue_still_works(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    async with robot.post("/api/case", json={"name": "continued"}, expect100=True) as response:
        assert response.status == 200
        assert (await response.json())["data"]["name"] == "continued"


class ReviewedAuth(FusionAuthAPI):
    """A service hook: only cases named "reviewed" may be updated."""

    async def authorize_impl(self, identity: Identity, action: Action, case: Case | None) -> bool:
        return action.name != "update_case" or case is None or case.name == "reviewed"


class ReviewServer(FusionServer):
    def create_auth_api(self) -> FusionAuthAPI:
        api = super().create_auth_api()
        return ReviewedAuth(api.config, api.backend, trusted_proxies=api.trusted_proxies)

    def setup_routes(self, app: web.Application) -> None:
        async def whoami(request: web.Request) -> web.Response:
            identity = await request.app[AUTH].authorize(request, Action("whoami"))
            return web.json_response({"status": 200, "data": identity.username, "count": 1})

        app.router.add_get("/api/whoami", whoami)


async def test_service_hooks_and_routes(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    server = await fusion_server(ReviewServer(server_config(tmp_path)))
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(robot, "GET", "/api/whoami")
    assert (status, envelope["data"]) == (200, "robot")
    for name, expected in (("draft", 403), ("reviewed", 200)):
        status, envelope = await call(robot, "POST", "/api/case", json={"name": name})
        case_guid = envelope["data"]["guid"]
        status, envelope = await call(robot, "PUT", f"/api/case/{case_guid}", json={"tsid": "x"})
        assert (name, status) == (name, expected)
        if status == 403:
            assert envelope["message"] == "not authorized"
