"""Every case hook gets the request's CaseContext: what it sees, how it refuses, its ext.

A FusionCaseAPI subclass records the context of each hook call and fills
``ctx.ext``; over real sockets (memory:// and a real redis-server as the
shared store) its hooks see the request, the caller, whether it is the
federation key and an update's changes as sent; a hook refusing with a
reason answers that reason in the envelope and nothing stored changes; the
ext it sets arrives in the events an ``/api/events`` subscriber and a
webhook receive; the cases hooks get are the request's own copies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import (
    FEDERATION_KEY,
    ROBOT_KEY,
    HTTPSessionFactory,
    RunningServer,
    ServerFactory,
    call,
    login,
    server_config,
)

from fusion.concept import Case, Event
from fusion.helper.http_envelope import FusionHTTPError
from fusion.helper.sse import iter_sse
from fusion.server import FusionServer
from fusion.server.case import CaseContext, FusionCaseAPI
from fusion.server.storage import VersionedCase

TOKEN = "notifier-token-0123456789"


class HookedCaseAPI(FusionCaseAPI[Case]):
    """Records (hook, ctx) of every call; refuses some names; fills ``ctx.ext``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, CaseContext]] = []

    async def enumerate_cases_impl(self, ctx: CaseContext) -> list[Case]:
        self.seen.append(("enumerate", ctx))
        return await super().enumerate_cases_impl(ctx)

    async def retrieve_case_impl(
        self, ctx: CaseContext, case_guid: UUID
    ) -> VersionedCase[Case] | None:
        self.seen.append(("retrieve", ctx))
        found = await super().retrieve_case_impl(ctx, case_guid)
        if found is not None and found.case.name == "copy":
            # The request's own copy: changing it must not leak into the next request.
            found.case.description += "+seen"
        return found

    async def create_case_impl(self, ctx: CaseContext, case: Case) -> Case:
        self.seen.append(("create", ctx))
        if case.name == "refused":
            raise FusionHTTPError(422, "cases named 'refused' are refused")
        if case.name != "plain":
            ctx.ext.update({"hook": "create", "by": ctx.identity.username})
        return await super().create_case_impl(ctx, case)

    async def update_case_impl(
        self, ctx: CaseContext, case: Case, *, expected_version: int
    ) -> Case:
        self.seen.append(("update", ctx))
        assert ctx.changes is not None
        if ctx.changes.get("name") == "refused":
            raise FusionHTTPError(422, "no case may be renamed 'refused'")
        ctx.ext.update({"hook": "update", "by": ctx.identity.username, "sent": sorted(ctx.changes)})
        return await super().update_case_impl(ctx, case, expected_version=expected_version)

    async def delete_case_impl(
        self, ctx: CaseContext, case: Case, *, expected_version: int
    ) -> bool:
        self.seen.append(("delete", ctx))
        if case.name == "keep":
            raise FusionHTTPError(403, "this case is kept")
        ctx.ext.update({"hook": "delete", "by": ctx.identity.username})
        return await super().delete_case_impl(ctx, case, expected_version=expected_version)

    async def attach_case_impl(
        self, ctx: CaseContext, case: Case, next_case_guid: UUID
    ) -> Case | None:
        self.seen.append(("attach", ctx))
        # previous_guid is the framework's: the hook's value of that key is overridden.
        ctx.ext.update({"hook": "attach", "previous_guid": "the hook's"})
        return await super().attach_case_impl(ctx, case, next_case_guid)


class HookedServer(FusionServer):
    def create_case_api(self) -> HookedCaseAPI:
        assert self.config.case is not None
        return HookedCaseAPI(self.config.case, self.case_type)


class Receiver:
    """A webhook receiver: the JSON bodies posted to it, and a way to wait for them."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            self.bodies.append(await request.json())
            self._arrived.set()
            return web.Response()

        app = web.Application()
        app.router.add_post("/{tail:.*}", hook)
        return app

    async def wait_for(self, done: Callable[[list[dict[str, Any]]], bool]) -> None:
        async with asyncio.timeout(20):
            while not done(self.bodies):
                self._arrived.clear()
                await self._arrived.wait()


class Setup:
    def __init__(
        self, running: RunningServer, api: HookedCaseAPI, receiver: Receiver, sessions: Any
    ) -> None:
        self.running = running
        self.api = api
        self.receiver = receiver
        self.alice: aiohttp.ClientSession = sessions["alice"]
        self.robot: aiohttp.ClientSession = sessions["robot"]
        self.hub: aiohttp.ClientSession = sessions["hub"]


@pytest.fixture
async def setup(
    tmp_path: Path,
    store_url: str,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> Setup:
    receiver = Receiver()
    hooks = await fusion_server(receiver.app())
    config = server_config(
        tmp_path,
        shared_store={"url": store_url},
        event={"source": "fusion-test", "api_key": TOKEN, "webhook": f"{hooks.url}/global"},
    )
    server = HookedServer(config)
    running = await fusion_server(server)
    assert isinstance(server.case_api, HookedCaseAPI)
    alice = http_sessions(running.url)
    assert (await login(alice, "alice"))[0] == 200
    sessions = {
        "alice": alice,
        "robot": http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY}),
        "hub": http_sessions(running.url, headers={"X-Fusion-API-Token": FEDERATION_KEY}),
    }
    return Setup(running, server.case_api, receiver, sessions)


async def _create(session: aiohttp.ClientSession, **fields: Any) -> str:
    status, envelope = await call(session, "POST", "/api/case", json=fields)
    assert status == 200, envelope
    guid: str = envelope["data"]["guid"]
    return guid


def _taken(api: HookedCaseAPI, *hooks: str) -> list[CaseContext]:
    """The contexts of the hook calls since the last call, checked to be ``hooks``."""
    seen, api.seen = api.seen, []
    assert [hook for hook, _ in seen] == list(hooks)
    return [ctx for _, ctx in seen]


def _facts(ctx: CaseContext) -> tuple[str, str, str, str, bool]:
    return (
        ctx.request.method,
        ctx.request.path,
        ctx.identity.username,
        ctx.caller.source,
        ctx.federation,
    )


# -- what hooks see ----------------------------------------------------------------------


async def test_hooks_see_the_request_the_caller_federation_and_changes(setup: Setup) -> None:
    api = setup.api
    guid = await _create(setup.alice, name="c1", acs=["analysts", "robots"])
    [ctx] = _taken(api, "create")
    assert _facts(ctx) == ("POST", "/api/case", "alice", "session", False)
    assert ctx.changes is None
    assert ctx.ext == {"hook": "create", "by": "alice"}
    with pytest.raises(AttributeError):
        ctx.ext = {}  # type: ignore[misc]

    # An update: the changes exactly as sent, keys the update rules ignore included.
    sent = {"description": "new", "guid": str(uuid4()), "managed": True}
    status, envelope = await call(setup.robot, "PUT", f"/api/case/{guid}", json=sent)
    assert status == 200, envelope
    assert envelope["data"]["guid"] == guid
    read, ctx = _taken(api, "retrieve", "update")
    assert read is ctx  # one context per request
    assert _facts(ctx) == ("PUT", f"/api/case/{guid}", "robot", "key", False)
    assert isinstance(ctx.changes, MappingProxyType)
    assert dict(ctx.changes) == sent
    with pytest.raises(TypeError):
        ctx.changes["name"] = "x"  # type: ignore[index]

    # The federation key, on reads and attach.
    assert (await call(setup.hub, "GET", f"/api/case/{guid}"))[0] == 200
    [ctx] = _taken(api, "retrieve")
    assert _facts(ctx) == ("GET", f"/api/case/{guid}", "hub", "key", True)
    assert ctx.changes is None

    next_guid = str(uuid4())
    status, envelope = await call(setup.hub, "PUT", f"/api/case/{guid}/attach/{next_guid}")
    assert status == 200, envelope
    read, ctx = _taken(api, "retrieve", "attach")
    assert read is ctx
    assert _facts(ctx) == ("PUT", f"/api/case/{guid}/attach/{next_guid}", "hub", "key", True)

    status, envelope = await call(setup.robot, "GET", "/api/cases")
    assert (status, [case["guid"] for case in envelope["data"]]) == (200, [next_guid])
    [ctx] = _taken(api, "enumerate")
    assert _facts(ctx) == ("GET", "/api/cases", "robot", "key", False)

    status, envelope = await call(setup.robot, "DELETE", f"/api/case/{next_guid}")
    assert status == 200, envelope
    read, ctx = _taken(api, "retrieve", "delete")
    assert read is ctx
    assert _facts(ctx) == ("DELETE", f"/api/case/{next_guid}", "robot", "key", False)


async def test_hooks_get_the_requests_own_copy_of_a_case(setup: Setup) -> None:
    guid = await _create(setup.robot, name="copy", description="stored")
    # Each read's hook appends to its copy: were copies shared, the suffixes would pile up.
    for _ in range(3):
        status, envelope = await call(setup.robot, "GET", f"/api/case/{guid}")
        assert (status, envelope["data"]["description"]) == (200, "stored+seen")


# -- refusing with a reason ---------------------------------------------------------------


async def test_a_hook_refusing_answers_its_reason_and_nothing_is_stored(setup: Setup) -> None:
    robot = setup.robot

    async def stored() -> list[dict[str, Any]]:
        status, envelope = await call(setup.hub, "GET", "/api/cases")
        assert status == 200
        cases: list[dict[str, Any]] = envelope["data"]
        return cases

    status, envelope = await call(robot, "POST", "/api/case", json={"name": "refused"})
    assert (status, envelope) == (
        422,
        {"status": 422, "message": "cases named 'refused' are refused"},
    )
    assert await stored() == []

    guid = await _create(robot, name="kept name")
    path = f"/api/case/{guid}"
    async with robot.get(path) as response:
        etag = response.headers["ETag"]
        before = (await response.json())["data"]
    status, envelope = await call(robot, "PUT", path, json={"name": "refused", "tsid": "t"})
    assert (status, envelope) == (
        422,
        {"status": 422, "message": "no case may be renamed 'refused'"},
    )
    async with robot.get(path) as response:
        assert response.headers["ETag"] == etag
        assert (await response.json())["data"] == before

    keep = await _create(robot, name="keep")
    status, envelope = await call(robot, "DELETE", f"/api/case/{keep}")
    assert (status, envelope) == (403, {"status": 403, "message": "this case is kept"})
    assert sorted(case["guid"] for case in await stored()) == sorted([guid, keep])

    # Nothing was emitted for the refusals: the webhook saw the three creations only.
    status, _ = await call(robot, "PUT", path, json={"tsid": "after"})
    assert status == 200
    receiver = setup.receiver
    await receiver.wait_for(lambda bodies: any(b["category"] == "update_case" for b in bodies))
    # (Webhooks are sent concurrently: their order is not the events'.)
    assert sorted((body["category"], body["case"]["name"]) for body in receiver.bodies) == [
        ("create_case", "keep"),
        ("create_case", "kept name"),
        ("update_case", "kept name"),
    ]


# -- ext ----------------------------------------------------------------------------------


async def _events(session: aiohttp.ClientSession, guid: str) -> AsyncGenerator[Event[Any]]:
    async with session.get(f"/api/events/case/{guid}") as response:
        assert response.status == 200, await response.text()
        async for message in iter_sse(response.content):
            yield Event.from_json(message.data)


async def _next(events: AsyncIterator[Event[Any]], category: str) -> Event[Any]:
    async with asyncio.timeout(20):
        async for event in events:
            if event.category == category:
                return event
    raise AssertionError(f"the stream ended before a {category} event")


async def test_ext_set_by_a_hook_arrives_in_events_and_webhooks(setup: Setup) -> None:
    guid = await _create(setup.alice, name="c1", acs=["analysts", "robots"])
    plain = await _create(setup.alice, name="plain")
    events = _events(setup.alice, guid)
    await _next(events, "subscribers")

    status, _ = await call(setup.robot, "PUT", f"/api/case/{guid}", json={"description": "d"})
    assert status == 200
    updated = await _next(events, "update_case")
    assert updated.ext == {"hook": "update", "by": "robot", "sent": ["description"]}
    assert updated.case.description == "d"

    moved = str(uuid4())
    status, _ = await call(setup.hub, "PUT", f"/api/case/{plain}/attach/{moved}")
    assert status == 200
    status, _ = await call(setup.robot, "DELETE", f"/api/case/{guid}")
    assert status == 200
    deleted = await _next(events, "delete_case")
    assert deleted.ext == {"hook": "delete", "by": "robot"}
    await events.aclose()

    # The global webhook got every event with its hook's ext (none when the hook set none).
    receiver = setup.receiver
    await receiver.wait_for(lambda bodies: len(bodies) >= 5)
    received = {(body["category"], body["case"]["guid"]): body["ext"] for body in receiver.bodies}
    assert len(receiver.bodies) == len(received) == 5
    assert received == {
        ("create_case", guid): {"hook": "create", "by": "alice"},
        ("create_case", plain): None,
        ("update_case", guid): {"hook": "update", "by": "robot", "sent": ["description"]},
        ("attach_case", moved): {"hook": "attach", "previous_guid": plain},
        ("delete_case", guid): {"hook": "delete", "by": "robot"},
    }
