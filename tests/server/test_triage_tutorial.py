"""The tutorial's service, examples/triage_service.py, end to end as docs/tutorial.md runs it.

Two ``fusion-server serve --app triage_service:create_app --config triage.yml``
processes (the example's own config file) on one real Redis and one data
directory: a session made on one is used on the other, an upload on one
reaches a subscriber on the other, a worker process's events reach both, the
sample comes back through a one-time download with the same SHA-256, and a
change to a closed case is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from fusion_testing.fixtures_server import ServerProcess, call

from fusion.concept import Event
from fusion.helper.sse import iter_sse

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PASSWORD = "change-me-triage"

pytestmark = pytest.mark.redis


async def _next_event(events: AsyncIterator[Any], category: str) -> Event[Any]:
    async with asyncio.timeout(30):
        while True:
            sse = await anext(events)
            event: Event[Any] = Event.from_json(sse.data)
            if event.category == category:
                return event


def _replica(data: Path, redis_url: str) -> ServerProcess:
    env = {"TRIAGE_STORE": redis_url, "TRIAGE_DATA": str(data)}
    args = ["--app", "triage_service:create_app", "--config", "triage.yml"]
    return ServerProcess(args, cwd=EXAMPLES, env=env).start()


async def test_the_tutorial_service_on_two_replicas(tmp_path: Path, redis_url: str) -> None:
    data = tmp_path / "triage-data"
    replicas = [_replica(data, redis_url), _replica(data, redis_url)]
    try:
        await _scenario(replicas, data, redis_url)
    finally:
        codes = [replica.stop() for replica in replicas]
    for replica, code in zip(replicas, codes, strict=True):
        output = replica.output.decode(errors="replace")
        assert code == 0, output[-2000:]
        assert "Traceback" not in output, output
        assert "app triage_service:create_app" in output
        assert "fusion-server stopped" in output


async def _scenario(replicas: list[ServerProcess], data: Path, redis_url: str) -> None:
    one, two = (replica.url for replica in replicas)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        # A session made on one replica is a session on the other (the store holds it).
        status, envelope = await login_at(session, one)
        assert status == 200, envelope
        status, envelope = await call(
            session, "POST", f"{two}/api/case", json={"name": "host-7", "acs": ["analysts"]}
        )
        assert status == 200, envelope
        assert envelope["data"]["severity"] == 0  # the service's own case type
        guid = envelope["data"]["guid"]

        streams = [await session.get(f"{url}/api/events/case/{guid}") for url in (one, two)]
        try:
            events = [iter_sse(stream.content) for stream in streams]
            for stream_events in events:
                await _next_event(stream_events, "subscribers")

            # An upload on one replica; the subscriber on the other sees its event.
            sample = os.urandom(200_000) + b"MZ evil"
            sha256 = hashlib.sha256(sample).hexdigest()
            form = aiohttp.FormData()
            form.add_field("tags", '["ransomware", "host-7"]')
            form.add_field("comment", "from the USB key")
            form.add_field("file", sample, filename="evil.exe")
            status, envelope = await call(
                session, "POST", f"{one}/api/triage/{guid}/samples", data=form
            )
            assert status == 200, envelope
            assert envelope["data"]["sha256"] == sha256
            assert envelope["data"]["fields"]["tags"] == ["ransomware", "host-7"]
            uploaded = await _next_event(events[1], "sample_uploaded")
            assert uploaded.ext == {"sha256": sha256}

            # The worker process: one event per step, on both replicas.
            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "triage_service.py",
                "analyze",
                "--config",
                "triage.yml",
                guid,
                sha256,
                cwd=EXAMPLES,
                env={**os.environ, "TRIAGE_STORE": redis_url, "TRIAGE_DATA": str(data)},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(worker.communicate(), 60)
            assert worker.returncode == 0, output.decode(errors="replace")
            for stream_events in events:
                steps = [(await _next_event(stream_events, "analysis")).ext for _ in range(3)]
                assert [step["step"] for step in steps if step] == ["hashing", "strings", "verdict"]
                assert steps[0] == {"sha256": sha256, "step": "hashing", "result": True}
                assert steps[2] == {"sha256": sha256, "step": "verdict", "result": "suspicious"}
        finally:
            for stream in streams:
                stream.close()

        # Listed on the other replica; fetched back once through a download key.
        status, envelope = await call(session, "GET", f"{two}/api/triage/{guid}/samples")
        assert status == 200, envelope
        assert [item["sha256"] for item in envelope["data"]] == [sha256]
        status, envelope = await call(
            session, "GET", f"{two}/api/triage/{guid}/samples/{sha256}/download"
        )
        assert status == 200, envelope
        key = envelope["data"]
        download = f"{one}/api/download/{key['guid']}/{key['token']}"
        async with session.get(download) as response:
            assert response.status == 200
            assert hashlib.sha256(await response.read()).hexdigest() == sha256
            assert "evil.exe" in response.headers["Content-Disposition"]
        async with session.get(download) as response:
            assert response.status == 404  # one time only

        # A closed case refuses changes (the framework's rule): a new sample,
        # an update; reopening it is allowed.
        status, envelope = await call(
            session, "PUT", f"{one}/api/case/{guid}", json={"closed": "2026-12-01T00:00:00Z"}
        )
        assert status == 200, envelope
        form = aiohttp.FormData()
        form.add_field("file", b"late", filename="late.bin")
        status, envelope = await call(
            session, "POST", f"{two}/api/triage/{guid}/samples", data=form
        )
        assert status == 403, envelope
        assert "closed" in envelope["message"]
        status, envelope = await call(
            session, "PUT", f"{two}/api/case/{guid}", json={"description": "more"}
        )
        assert status == 403, envelope
        status, envelope = await call(
            session, "PUT", f"{two}/api/case/{guid}", json={"closed": None}
        )
        assert status == 200, envelope
        stored = msgspec.json.decode(
            (data / "samples" / guid / sha256 / "metadata.json").read_bytes()
        )
        assert stored["filename"] == "evil.exe"


async def login_at(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    return await call(
        session,
        "POST",
        f"{url}/api/auth/login",
        json={"data": {"username": "analyst", "password": PASSWORD}},
    )
