"""One GUID policy on every route: the canonical lower-case form, 400 in the envelope otherwise.

A real FusionServer (every API) on a loopback port; each non-canonical spelling
that ``uuid.UUID()`` would read is refused, on the case, attach, event and
download routes alike, and nothing stored changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fusion_testing.fixtures_server import (
    FEDERATION_KEY,
    ROBOT_KEY,
    RunningServer,
    ServerFactory,
    call,
    server_config,
)

from fusion.server.appkeys import DOWNLOADS

MESSAGE = "expected lower-case 8-4-4-4-12 hex"


def spellings(guid: str) -> list[str]:
    """What ``UUID()`` reads as ``guid`` but is not its canonical form."""
    hexa = guid.replace("-", "")
    first_letter = next(char for char in guid if char.isalpha())
    return [
        guid.upper(),
        guid.replace(first_letter, first_letter.upper(), 1),
        hexa,
        hexa.upper(),
        f"urn:uuid:{guid}",
    ]


@pytest.fixture
async def running(fusion_server: ServerFactory, tmp_path: Path) -> RunningServer:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "report.txt").write_bytes(b"the report\n")
    config = server_config(
        tmp_path / "data", event={"source": "guid-policy"}, download={"roots": [str(downloads)]}
    )
    return await fusion_server(config)


@pytest.fixture
async def session(running: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"X-Fusion-API-Token": FEDERATION_KEY}
    async with aiohttp.ClientSession(running.url, headers=headers) as client:
        yield client


async def _cases(session: aiohttp.ClientSession) -> Any:
    status, body = await call(session, "GET", "/api/cases")
    assert status == 200, body
    return sorted(body["data"], key=lambda case: case["guid"])


async def _refused(session: aiohttp.ClientSession, method: str, path: str, name: str) -> None:
    kwargs: dict[str, Any] = {"json": {"name": "renamed"}} if method == "PUT" else {}
    status, body = await call(session, method, path, **kwargs)
    assert status == 400, (method, path, body)
    assert body == {"status": 400, "message": f"invalid GUID for {name}: {MESSAGE}"}


async def test_case_and_event_routes_refuse_other_spellings(
    session: aiohttp.ClientSession,
) -> None:
    status, body = await call(session, "POST", "/api/case", json={"name": "one", "acs": ["hub"]})
    assert status == 200, body
    guid = body["data"]["guid"]
    status, body = await call(session, "POST", "/api/case", json={"name": "two", "acs": ["hub"]})
    assert status == 200, body
    other = body["data"]["guid"]
    before = await _cases(session)
    for variant in spellings(guid):
        await _refused(session, "GET", f"/api/case/{variant}", "case_guid")
        await _refused(session, "PUT", f"/api/case/{variant}", "case_guid")
        await _refused(session, "DELETE", f"/api/case/{variant}", "case_guid")
        await _refused(session, "GET", f"/api/events/case/{variant}", "case_guid")
        await _refused(session, "PUT", f"/api/case/{variant}/attach/{other}", "case_guid")
        await _refused(session, "PUT", f"/api/case/{other}/attach/{variant}", "next_case_guid")
    # Nothing stored changed, and the canonical spelling still works.
    assert await _cases(session) == before
    status, body = await call(session, "GET", f"/api/case/{guid}")
    assert status == 200
    assert body["data"]["guid"] == guid


async def test_download_route_refuses_other_spellings(
    running: RunningServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key = await running.app[DOWNLOADS].prepare(tmp_path / "downloads" / "report.txt", "r.txt")
    guid = str(key.guid)
    async with aiohttp.ClientSession(running.url) as anonymous:
        for variant in spellings(guid):
            await _refused(anonymous, "GET", f"/api/download/{variant}/{key.token}", "guid")
        # The key was neither used up nor burnt by the refused spellings.
        async with anonymous.get(f"/api/download/{guid}/{key.token}") as response:
            assert response.status == 200
            assert await response.read() == b"the report\n"


@pytest.mark.parametrize("key", [ROBOT_KEY, FEDERATION_KEY])
async def test_canonical_guid_of_an_unknown_case_is_404(running: RunningServer, key: str) -> None:
    # The policy is about spelling: a well-formed GUID goes on to the lookup.
    async with aiohttp.ClientSession(running.url, headers={"X-Fusion-API-Token": key}) as client:
        status, body = await call(client, "GET", "/api/case/0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d11")
    assert status == 404, body
