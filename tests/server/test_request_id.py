"""Request ids over real sockets: echoed or generated in ``X-Request-ID``, hostile ones
replaced, seen by handlers, in the access log (text and JSON) and in the audit records
of the request; and a real ``serve`` process's start and stop lines, stopped by SIGTERM
with an event stream open and a webhook delivery pending."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    ServerFactory,
    ServerProcess,
    call,
    server_config,
    server_config_dict,
    write_config,
)

from fusion.helper.sse import iter_sse
from fusion.helper.tracing import REQUEST_ID, current_request_id
from fusion.server.app import FusionServer

GENERATED = re.compile(r"[0-9a-f]{16}")
ROBOT = {"X-Fusion-API-Token": ROBOT_KEY}


async def _service(fusion_server: ServerFactory, tmp_path: Path) -> str:
    """A server with one route of the service's own, answering the ids it sees."""

    async def ids(request: web.Request) -> web.Response:
        return web.json_response({"key": request[REQUEST_ID], "current": current_request_id()})

    server = FusionServer(server_config(tmp_path))
    server.add_routes([web.get("/api/ids", ids)])
    return (await fusion_server(server)).url


async def test_echoed_and_seen_by_handlers(
    fusion_server: ServerFactory, http_sessions: HTTPSessionFactory, tmp_path: Path
) -> None:
    session = http_sessions(await _service(fusion_server, tmp_path))
    for sent in ("trace-1", "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f", "x" * 128):
        async with session.get("/api/ids", headers={"X-Request-ID": sent}) as response:
            assert response.headers["X-Request-ID"] == sent
            assert await response.json() == {"key": sent, "current": sent}
    # Every answer, errors and the framework's own routes too.
    async with session.get("/api/cases", headers={"X-Request-ID": "no-auth"}) as response:
        assert response.status == 401
        assert response.headers["X-Request-ID"] == "no-auth"
    async with session.get("/nowhere", headers={"X-Request-ID": "lost"}) as response:
        assert response.status == 404
        assert response.headers["X-Request-ID"] == "lost"


async def test_generated_when_absent(
    fusion_server: ServerFactory, http_sessions: HTTPSessionFactory, tmp_path: Path
) -> None:
    session = http_sessions(await _service(fusion_server, tmp_path))
    seen = set()
    for _ in range(3):
        async with session.get("/api/ids") as response:
            given = response.headers["X-Request-ID"]
            assert GENERATED.fullmatch(given)
            assert await response.json() == {"key": given, "current": given}
            seen.add(given)
    assert len(seen) == 3


@pytest.mark.parametrize(
    "hostile",
    ["x" * 129, "two words", 'quote"d', "back\\slash", "tab\there", "caf\u00e9", ""],
)
async def test_hostile_ids_are_replaced(
    fusion_server: ServerFactory, http_sessions: HTTPSessionFactory, tmp_path: Path, hostile: str
) -> None:
    session = http_sessions(await _service(fusion_server, tmp_path))
    async with session.get("/api/ids", headers={"X-Request-ID": hostile}) as response:
        given = response.headers["X-Request-ID"]
        assert GENERATED.fullmatch(given), given
        assert (await response.json())["key"] == given


def _process(tmp_path: Path, log_format: str, **sections: object) -> ServerProcess:
    config = server_config_dict(tmp_path, server={"access_log": True}, **sections)
    path = write_config(tmp_path / "server.yml", config)
    return ServerProcess(
        ["--config", str(path)],
        cwd=tmp_path,
        env={"FUSION_LOG_FILE": str(tmp_path / "server.log"), "FUSION_LOG_FORMAT": log_format},
    )


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_in_the_access_log_and_the_audit_records(tmp_path: Path, log_format: str) -> None:
    process = _process(tmp_path, log_format)
    await asyncio.to_thread(process.start)
    try:
        async with aiohttp.ClientSession(process.url, headers=ROBOT) as session:
            status, body = await call(
                session, "POST", "/api/case", json={"name": "ids"}, headers={"X-Request-ID": "c-1"}
            )
            assert status == 200, body
            guid = body["data"]["guid"]
            async with session.get(
                f"/api/case/{guid}", headers={"X-Request-ID": "evil\tid"}
            ) as response:
                assert response.status == 200
                replaced = response.headers["X-Request-ID"]
    finally:
        code = await asyncio.to_thread(process.stop)
    assert code == 0, process.output[-2000:]
    assert GENERATED.fullmatch(replaced)
    lines = (tmp_path / "server.log").read_text(encoding="utf-8").splitlines()
    assert "evil" not in "\n".join(lines)
    if log_format == "text":
        access = [line for line in lines if " fusion.server.access: " in line]
        assert any('"POST /api/case HTTP/1.1" 200 ' in line for line in access)
        (created,) = (line for line in access if '"POST /api/case HTTP/1.1"' in line)
        assert created.endswith(" id=c-1")
        (read,) = (line for line in access if f'"GET /api/case/{guid} HTTP/1.1"' in line)
        assert read.endswith(f" id={replaced}")
        return
    records = [json.loads(line) for line in lines]
    access_records = {
        r["first_request_line"]: r for r in records if r["logger"] == "fusion.server.access"
    }
    assert access_records["POST /api/case HTTP/1.1"]["request_id"] == "c-1"
    read_record = access_records[f"GET /api/case/{guid} HTTP/1.1"]
    assert read_record["request_id"] == replaced
    assert read_record["request_time"] > 0
    audits = {r["audit"]["action"]: r["audit"] for r in records if r["logger"] == "fusion.audit"}
    assert audits["create_case"]["request_id"] == "c-1"
    assert audits["retrieve_case"]["request_id"] == replaced


@pytest.fixture
async def stuck_receiver() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A webhook receiver that takes every POST and never answers it."""
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/hook", arrived
    finally:
        release.set()
        await runner.cleanup()


async def test_stop_line_names_what_was_closed(
    tmp_path: Path, stuck_receiver: tuple[str, asyncio.Event]
) -> None:
    webhook, arrived = stuck_receiver
    process = _process(tmp_path, "text", event={"webhook": webhook, "webhook_timeout": 60})
    await asyncio.to_thread(process.start)
    try:
        async with aiohttp.ClientSession(process.url, headers=ROBOT) as session:
            status, body = await call(session, "POST", "/api/case", json={"name": "stop"})
            assert status == 200, body
            guid = body["data"]["guid"]
            # The create_case event's delivery is in flight, and stays so.
            async with asyncio.timeout(30):
                await arrived.wait()
            async with session.get(f"/api/events/case/{guid}") as response:
                assert response.status == 200
                events = iter_sse(response.content)
                async with asyncio.timeout(30):
                    first = await anext(events)
                # The stream is registered: its first event (subscribers) was sent.
                assert json.loads(first.data)["category"] == "subscribers"
                stopping = asyncio.create_task(asyncio.to_thread(process.stop))
                async with asyncio.timeout(30):
                    # The server ends the stream on SIGTERM.
                    async for _ in events:
                        pass
                code = await stopping
    finally:
        await asyncio.to_thread(process.stop)
    assert code == 0, process.output[-2000:]
    log = (tmp_path / "server.log").read_text(encoding="utf-8")
    assert re.search(r"INFO fusion\.server: serving on http://127\.0\.0\.1:\d+ \(pid \d+\)", log)
    assert (
        "INFO fusion.server: stopping on SIGTERM: 1 open event streams,"
        " 1 webhook deliveries pending"
    ) in log
    assert (
        "INFO fusion.server: stopped: 1 event streams ended, webhook deliveries:"
        " 0 waited for, 1 abandoned; shared store and storage closed"
    ) in log
    assert "Traceback" not in log
