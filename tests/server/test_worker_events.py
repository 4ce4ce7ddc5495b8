"""Events from a worker process: CaseEventPublisher.from_config(config), no web application.

Two real ``fusion-server`` processes share one real redis-server and one data
directory; a subscriber follows the case on each; a separate Python process
(the service's analyzer) publishes with nothing but the configuration file.
The event reaches both subscribers, and a webhook receiver (an aiohttp server
on loopback, here) gets it once per webhook, in the shape of the web
process's own events.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from fusion_testing.clock import eventually
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    ServerFactory,
    ServerProcess,
    call,
    server_config,
    server_config_dict,
    write_config,
)

from fusion.concept import Case, Event
from fusion.helper.notifier import NOTIFIER_TOKEN_HEADER, case_channel
from fusion.helper.pubsub import FusionPubSub
from fusion.helper.sse import iter_sse
from fusion.helper.store import create_store
from fusion.server.event import CaseEventPublisher

REPO = Path(__file__).resolve().parents[2]
NOTIFIER_TOKEN = "notifier-token-0123456789abcdef"
ROBOT = {"X-Fusion-API-Token": ROBOT_KEY}

# The analyzer of a service: its configuration file and the case, nothing else.
WORKER = """
import asyncio, sys

from fusion.concept import Case
from fusion.server.config import load_config
from fusion.server.event import CaseEventPublisher


async def main() -> None:
    config = load_config(sys.argv[1])
    case = Case.from_json(sys.argv[2].encode())
    async with CaseEventPublisher.from_config(config) as events:
        await events.notify("analysis_done", case, ext={"status": "success", "hits": 3})


asyncio.run(main())
"""


class Received(msgspec.Struct):
    path: str
    token: str | None
    body: bytes


async def _webhook_receiver(fusion_server: ServerFactory) -> tuple[str, list[Received]]:
    received: list[Received] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(
            Received(request.path, request.headers.get(NOTIFIER_TOKEN_HEADER), await request.read())
        )
        return web.json_response({"status": 200})

    app = web.Application()
    app.router.add_post("/hooks/{name}", hook)
    running = await fusion_server(app)
    return running.url, received


def _categories(received: list[Received], path: str) -> list[str]:
    return [Event.from_json(item.body).category for item in received if item.path == path]


async def _next_event(events: AsyncIterator[Any], category: str) -> bytes:
    async with asyncio.timeout(30):
        while True:
            sse = await anext(events)
            if Event.from_json(sse.data).category == category:
                data: bytes = sse.data.encode() if isinstance(sse.data, str) else sse.data
                return data


@pytest.mark.redis
async def test_a_worker_process_reaches_every_replica_and_each_webhook_once(
    tmp_path: Path, redis_url: str, fusion_server: ServerFactory
) -> None:
    hooks_url, received = await _webhook_receiver(fusion_server)
    config = server_config_dict(
        tmp_path / "data",
        shared_store={"url": redis_url},
        event={
            "source": "sample-service",
            "api_key": NOTIFIER_TOKEN,
            "webhook": f"{hooks_url}/hooks/global",
            "webhook_prefixes": [f"{hooks_url}/hooks/"],
        },
    )
    config_path = write_config(tmp_path / "service.yml", config)
    replicas = [
        ServerProcess(["--config", str(config_path)], cwd=tmp_path).start(),
        ServerProcess(["--config", str(config_path)], cwd=tmp_path).start(),
    ]
    try:
        await _run_scenario(replicas, config_path, hooks_url, received)
    finally:
        codes = [replica.stop() for replica in replicas]
    for replica, code in zip(replicas, codes, strict=True):
        assert code == 0, replica.output[-2000:]
        assert b"Traceback" not in replica.output, replica.output.decode(errors="replace")


async def _run_scenario(
    replicas: list[ServerProcess], config_path: Path, hooks_url: str, received: list[Received]
) -> None:
    first = replicas[0]
    async with aiohttp.ClientSession(headers=ROBOT) as session:
        status, envelope = await call(
            session,
            "POST",
            f"{first.url}/api/case",
            json={"name": "host-42", "acs": ["robots"], "webhooks": [f"{hooks_url}/hooks/case"]},
        )
        assert status == 200, envelope
        case = Case.from_dict(envelope["data"])
        streams = [
            await session.get(f"{replica.url}/api/events/case/{case.guid}") for replica in replicas
        ]
        try:
            assert [stream.status for stream in streams] == [200, 200]
            events = [iter_sse(stream.content) for stream in streams]
            for stream_events in events:
                # Sent once the stream's subscription is live.
                await _next_event(stream_events, "subscribers")

            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER,
                str(config_path),
                case.to_json().decode(),
                cwd=config_path.parent,
                env={**os.environ, "PYTHONPATH": str(REPO / "tools" / "testing")},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(worker.communicate(), 60)
            assert worker.returncode == 0, output.decode(errors="replace")

            seen = [await _next_event(stream_events, "analysis_done") for stream_events in events]
        finally:
            for stream in streams:
                stream.close()

        # The worker's close() waited for its deliveries: they are in.
        hooks = ("/hooks/global", "/hooks/case")
        for path in hooks:
            assert _categories(received, path).count("analysis_done") == 1, received
        delivered = [
            item for item in received if _categories([item], item.path) == ["analysis_done"]
        ]
        assert {item.token for item in delivered} == {NOTIFIER_TOKEN}
        # Every replica's subscriber got the very bytes the webhooks got.
        assert seen[0] == seen[1] == delivered[0].body == delivered[1].body
        event = Event.from_json(seen[0])
        assert (event.source, event.category, event.case.guid, event.ext) == (
            "sample-service",
            "analysis_done",
            case.guid,
            {"status": "success", "hits": 3},
        )
        # The same shape as the web process's own events.
        created = next(
            Event.from_json(item.body)
            for item in received
            if item.path == "/hooks/global" and Event.from_json(item.body).category == "create_case"
        )
        assert set(msgspec.json.decode(seen[0])) == set(msgspec.json.decode(created.to_json()))
        assert created.source == event.source

        # Later events of both web processes arrive; the worker's still came once
        # (the replicas, which saw it on the store, never post it themselves).
        for number, replica in enumerate(replicas):
            status, _ = await call(
                session,
                "PUT",
                f"{replica.url}/api/case/{case.guid}",
                json={"description": f"update {number}"},
            )
            assert status == 200

        def both_updates_delivered() -> bool:
            return all(_categories(received, path).count("update_case") == 2 for path in hooks)

        await eventually(both_updates_delivered, "the replicas' update_case webhooks")
        for path in hooks:
            assert _categories(received, path).count("analysis_done") == 1, received


@pytest.mark.parametrize("url", ["memory://", pytest.param("redis", marks=pytest.mark.redis)])
async def test_from_config_publishes_like_the_event_api(
    tmp_path: Path, url: str, request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue("redis_url") if url == "redis" else url
    config = server_config(
        tmp_path, shared_store={"url": store_url}, event={"source": "sample-service"}
    )
    case = Case(name="host-42")
    # A subscriber of its own on the same store (for memory://, the same object).
    store = create_store(store_url)
    pubsub = FusionPubSub(store)
    try:
        async with pubsub.subscribe(case_channel(case.guid)) as subscription:
            shared = store if store_url == "memory://" else None
            async with CaseEventPublisher.from_config(config, store=shared) as events:
                message_id = await events.notify("analysis_done", case, ext={"tags": ["a", "b"]})
            message = await asyncio.wait_for(anext(subscription), 30)
        assert message_id is not None
        assert message.id == message_id
        assert (
            message.data
            == Event(
                source="sample-service",
                category="analysis_done",
                case=case,
                ext={"tags": ["a", "b"]},
            ).to_json()
        )
        history = await pubsub.history(case_channel(case.guid))
        assert [kept.data for kept in history] == [message.data]
    finally:
        await pubsub.close()
        await store.close()


def test_from_config_without_an_event_section_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no event section"):
        CaseEventPublisher.from_config(server_config(tmp_path, event=None))


async def test_a_closed_publisher_refuses_to_notify(tmp_path: Path) -> None:
    config = server_config(tmp_path, event={})
    events = CaseEventPublisher.from_config(config)
    await events.close()
    with pytest.raises(RuntimeError, match="closed"):
        await events.notify("late", Case(name="x"))
