"""Downloads that carry the caller's credentials to its own server, and never elsewhere.

A real FusionServer on loopback (the download API, a service route that
prepares a one-time key, one that streams a file to an authenticated caller,
one that redirects), and a second, foreign aiohttp server on loopback that
records the headers it receives.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import ROBOT_KEY, TEST_USERS, ServerFactory, server_config

from fusion.client import (
    FusionAPIError,
    FusionAuthAPIClient,
    FusionClient,
    FusionClientConfig,
    FusionDownloadAPIClient,
    TransferProgress,
)
from fusion.concept import PendingDownloadKey
from fusion.helper.http_envelope import json_response
from fusion.helper.http_response import stream_response
from fusion.helper.streaming import iter_file
from fusion.server import FusionServer
from fusion.server.appkeys import AUTH, DOWNLOADS

SIZE = 3 * 1024 * 1024 + 17
SESSION_COOKIE = "FUSION_SESSION"


@dataclass
class Setup:
    url: str
    foreign_url: str
    file: Path
    sha256: str
    own_headers: list[dict[str, str]] = field(default_factory=list)
    foreign_headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def setup(tmp_path: Path, fusion_server: ServerFactory) -> Setup:
    root = tmp_path / "files"
    root.mkdir()
    evidence = root / "evidence.bin"
    data = os.urandom(SIZE)
    evidence.write_bytes(data)
    foreign_file = tmp_path / "foreign.bin"
    foreign_file.write_bytes(b"foreign bytes")
    found = Setup(url="", foreign_url="", file=evidence, sha256=hashlib.sha256(data).hexdigest())

    # The foreign host: records what reaches it, serves a file.
    @web.middleware
    async def record_foreign(request: web.Request, handler: Any) -> web.StreamResponse:
        found.foreign_headers.append(dict(request.headers))
        response: web.StreamResponse = await handler(request)
        return response

    async def foreign_download(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(foreign_file)

    foreign = web.Application(middlewares=[record_foreign])
    foreign.router.add_get("/file", foreign_download)
    found.foreign_url = (await fusion_server(foreign)).url

    # The service: prepares keys, streams a file to its callers, redirects away.
    @web.middleware
    async def record_own(request: web.Request, handler: Any) -> web.StreamResponse:
        found.own_headers.append(dict(request.headers))
        response: web.StreamResponse = await handler(request)
        return response

    async def prepare(request: web.Request) -> web.Response:
        await request.app[AUTH].authenticate(request)
        return json_response(await request.app[DOWNLOADS].prepare(evidence, "evidence.bin"))

    async def analysis_log(request: web.Request) -> web.StreamResponse:
        await request.app[AUTH].authenticate(request)
        return await stream_response(request, iter_file(evidence), "analysis.log", size=SIZE)

    async def elsewhere(request: web.Request) -> web.Response:
        await request.app[AUTH].authenticate(request)
        return web.Response(status=302, headers={"Location": found.foreign_url + "/file"})

    server = FusionServer(server_config(tmp_path / "data", download={"roots": [str(root)]}))
    server.add_middleware(record_own)
    server.add_routes(
        [
            web.get("/api/evidence/download", prepare),
            web.get("/api/evidence/log", analysis_log),
            web.get("/api/evidence/elsewhere", elsewhere),
        ]
    )
    found.url = (await fusion_server(server)).url
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_download_route_sends_content_length(setup: Setup) -> None:
    """The server knows the file's size: Content-Length, not a chunked body."""
    async with FusionClient(FusionClientConfig(api_url=setup.url, api_key=ROBOT_KEY)) as client:
        key = await client.request("GET", "/api/evidence/download", concept_type=PendingDownloadKey)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{setup.url}/api/download/{key.guid}/{key.token}") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Length"] == str(SIZE)
        assert "Transfer-Encoding" not in response.headers
        assert hashlib.sha256(await response.read()).hexdigest() == setup.sha256


async def test_download_progress_total_is_the_content_length(setup: Setup, tmp_path: Path) -> None:
    steps: list[TransferProgress] = []
    async with FusionClient(FusionClientConfig(api_url=setup.url, api_key=ROBOT_KEY)) as client:
        key = await client.request("GET", "/api/evidence/download", concept_type=PendingDownloadKey)
        path = await FusionDownloadAPIClient(client).download(
            key, tmp_path, on_progress=steps.append
        )
    assert path == tmp_path / "evidence.bin"
    assert _sha256(path) == setup.sha256
    assert steps[0].done == 0
    assert steps[-1].done == SIZE
    assert all(step.total == SIZE for step in steps)
    assert [step.done for step in steps] == sorted(step.done for step in steps)
    assert steps[0].fraction == 0.0
    assert steps[-1].fraction == 1.0
    assert steps[-1].eta == 0.0


async def test_a_route_that_needs_the_key_gets_it(setup: Setup, tmp_path: Path) -> None:
    legacy: list[tuple[int, int | None]] = []
    async with FusionClient(FusionClientConfig(api_url=setup.url, api_key=ROBOT_KEY)) as client:
        downloads = FusionDownloadAPIClient(client)
        path = await downloads.download(
            "/api/evidence/log", tmp_path, progress=lambda done, total: legacy.append((done, total))
        )
    assert path == tmp_path / "analysis.log"
    assert _sha256(path) == setup.sha256
    assert setup.own_headers[-1]["X-Fusion-API-Token"] == ROBOT_KEY
    # The older two-number progress form still works.
    assert legacy[0] == (0, SIZE)
    assert legacy[-1] == (SIZE, SIZE)
    # Without credentials the same route refuses.
    async with FusionClient(FusionClientConfig(api_url=setup.url)) as anonymous:
        with pytest.raises(FusionAPIError) as caught:
            await FusionDownloadAPIClient(anonymous).download("/api/evidence/log", tmp_path)
        assert caught.value.status == 401


async def test_a_logged_in_user_downloads_with_the_session(setup: Setup, tmp_path: Path) -> None:
    async with FusionClient(FusionClientConfig(api_url=setup.url)) as client:
        await FusionAuthAPIClient(client).login("alice", TEST_USERS["alice"][0])
        path = await FusionDownloadAPIClient(client).download(
            setup.url + "/api/evidence/log", tmp_path / "log.txt"
        )
    assert _sha256(path) == setup.sha256
    assert SESSION_COOKIE in setup.own_headers[-1]["Cookie"]


async def test_credentials_never_go_to_another_host(setup: Setup, tmp_path: Path) -> None:
    config = FusionClientConfig(api_url=setup.url, api_key=ROBOT_KEY)
    async with FusionClient(config) as client:
        await FusionAuthAPIClient(client).login("alice", TEST_USERS["alice"][0])
        downloads = FusionDownloadAPIClient(client)
        # A URL on another host (here: another port of the same address).
        direct = await downloads.download(setup.foreign_url + "/file", tmp_path / "direct.bin")
        # A redirect from the service's own route to the other host.
        redirected = await downloads.download("/api/evidence/elsewhere", tmp_path / "moved.bin")
        # A plain API call to an absolute URL elsewhere, or redirected there,
        # does not carry them either (the answer is no envelope: an error).
        with pytest.raises(FusionAPIError, match="invalid response"):
            await client.request("GET", setup.foreign_url + "/file")
        with pytest.raises(FusionAPIError, match="invalid response"):
            await client.request("GET", "/api/evidence/elsewhere")
    assert direct.read_bytes() == redirected.read_bytes() == b"foreign bytes"
    assert len(setup.foreign_headers) == 4
    for headers in setup.foreign_headers:
        assert "X-Fusion-API-Token" not in headers
        assert "Cookie" not in headers
    # While the service's own route got both.
    assert setup.own_headers[-1]["X-Fusion-API-Token"] == ROBOT_KEY
    assert SESSION_COOKIE in setup.own_headers[-1]["Cookie"]
