"""Event subscriptions: decoding, comments, resume with Last-Event-ID, retries."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from fusion_testing.services import free_port

from fusion.client import (
    FusionAPIError,
    FusionCaseAPIClient,
    FusionClient,
    FusionClientConfig,
    FusionConnectionError,
    FusionEventAPIClient,
)
from fusion.concept import Case, Event

if TYPE_CHECKING:
    from tests.client.conftest import RunningServer


class TimelineCase(Case, kw_only=True):
    priority: str = "low"


async def _prepare(server: RunningServer, count: int) -> str:
    config = FusionClientConfig(api_url=server.url, api_key=server.api_key)
    async with FusionClient(config) as client:
        case = await FusionCaseAPIClient(client, TimelineCase).create(
            {"name": "watched", "priority": "high"}
        )
    server.state.events = [
        {
            "source": "test",
            "category": f"step-{number}",
            "case": case.to_dict(),
            "ext": {"number": number},
        }
        for number in range(1, count + 1)
    ]
    return str(case.guid)


async def _collect(server: RunningServer, case_guid: str, count: int, **kwargs: Any) -> list[Any]:
    config = FusionClientConfig(api_url=server.url, api_key=server.api_key)
    received: list[Any] = []
    async with FusionClient(config) as client:
        events = FusionEventAPIClient(client, initial_delay=0.01, max_delay=0.05)
        async with asyncio.timeout(10):
            async for event in events.subscribe(case_guid, TimelineCase, **kwargs):
                received.append(event)
                if len(received) == count:
                    break
    return received


async def test_events_decode_into_the_case_subclass(protocol_server: RunningServer) -> None:
    case_guid = await _prepare(protocol_server, 3)
    received = await _collect(protocol_server, case_guid, 3)
    assert [event.category for event in received] == ["step-1", "step-2", "step-3"]
    assert all(isinstance(event, Event) for event in received)
    assert all(isinstance(event.case, TimelineCase) for event in received)
    assert received[0].case.priority == "high"
    assert received[2].ext == {"number": 3}
    assert protocol_server.state.last_event_ids == [None]


async def test_dropped_stream_resumes_with_last_event_id(protocol_server: RunningServer) -> None:
    case_guid = await _prepare(protocol_server, 7)
    # First connection dies after 3 events, the second after 2 more, the third stays.
    protocol_server.state.cut_after = [3, 2]
    received = await _collect(protocol_server, case_guid, 7)
    assert [event.ext["number"] for event in received] == [1, 2, 3, 4, 5, 6, 7]
    assert protocol_server.state.last_event_ids == [None, "3", "5"]


async def test_retry_after_server_errors_then_resume(protocol_server: RunningServer) -> None:
    case_guid = await _prepare(protocol_server, 4)
    protocol_server.state.cut_after = [2]
    protocol_server.state.event_failures = 0
    config = FusionClientConfig(api_url=protocol_server.url, api_key=protocol_server.api_key)
    received: list[Event[Case]] = []
    async with FusionClient(config) as client:
        events = FusionEventAPIClient(client, initial_delay=0.01, max_delay=0.05)
        async with asyncio.timeout(10):
            async for event in events.subscribe(case_guid):
                received.append(event)
                if len(received) == 2:
                    # The reconnections that follow the cut meet two 503 first.
                    protocol_server.state.event_failures = 2
                if len(received) == 4:
                    break
    assert [event.category for event in received] == ["step-1", "step-2", "step-3", "step-4"]
    assert protocol_server.state.last_event_ids == [None, "2", "2", "2"]


async def test_resume_from_a_given_last_event_id(protocol_server: RunningServer) -> None:
    case_guid = await _prepare(protocol_server, 5)
    received = await _collect(protocol_server, case_guid, 2, last_event_id="3")
    assert [event.ext["number"] for event in received] == [4, 5]
    assert protocol_server.state.last_event_ids == ["3"]


async def test_first_connection_errors_are_raised(protocol_server: RunningServer) -> None:
    await _prepare(protocol_server, 1)
    config = FusionClientConfig(api_url=protocol_server.url, api_key=protocol_server.api_key)
    async with FusionClient(config) as client:
        with pytest.raises(FusionAPIError) as caught:
            async for _ in FusionEventAPIClient(client).subscribe(uuid.uuid4()):
                pass
        assert caught.value.status == 404
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        with pytest.raises(FusionAPIError) as caught:
            async for _ in FusionEventAPIClient(client).subscribe(uuid.uuid4()):
                pass
        assert caught.value.status == 401
    down = FusionClientConfig(api_url=f"http://127.0.0.1:{free_port()}")
    async with FusionClient(down) as client:
        with pytest.raises(FusionConnectionError):
            async for _ in FusionEventAPIClient(client).subscribe(uuid.uuid4()):
                pass


async def test_max_retries_gives_up_when_the_server_is_gone(
    protocol_server: RunningServer,
) -> None:
    case_guid = await _prepare(protocol_server, 2)
    protocol_server.state.cut_after = [1]
    protocol_server.state.event_failures = 0
    config = FusionClientConfig(api_url=protocol_server.url, api_key=protocol_server.api_key)
    received: list[Event[Case]] = []
    async with FusionClient(config) as client:
        events = FusionEventAPIClient(client, initial_delay=0.01, max_delay=0.02)

        async def consume() -> None:
            async with asyncio.timeout(10):
                async for event in events.subscribe(case_guid, max_retries=3):
                    received.append(event)
                    protocol_server.state.event_failures = 100

        with pytest.raises(FusionAPIError) as caught:
            await consume()
    assert caught.value.status == 503
    assert len(received) == 1
    # One initial connection plus 1 + 3 failed reconnections.
    assert len(protocol_server.state.last_event_ids) == 5


async def test_cancelling_the_consumer_stops_the_stream(protocol_server: RunningServer) -> None:
    case_guid = await _prepare(protocol_server, 1)
    config = FusionClientConfig(api_url=protocol_server.url, api_key=protocol_server.api_key)
    got_one = asyncio.Event()

    async def consume() -> None:
        async with FusionClient(config) as client:
            async for _ in FusionEventAPIClient(client).subscribe(case_guid):
                got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
