"""authorize_case for a service's own routes, and the closed-case rule, over real sockets.

A service adds routes on one case that call
``request.app[CASE_API].authorize_case(request, action)``: without
credentials 401, a bad GUID 400, an unknown case 404, no access 403,
read-only access for a change 403, a closed case for a change 403 (unless
the action is ``allow_closed``), the service's ``authorize_impl`` refusing
403; otherwise the case. Each decision is audited once. The case routes
apply the same closed-case rule: an update is refused, the update that
reopens is accepted, delete is accepted, attach is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import (
    FEDERATION_KEY,
    ROBOT_KEY,
    HTTPSessionFactory,
    RunningServer,
    ServerFactory,
    audit_records,
    call,
    login,
    server_config,
)

from fusion.concept import Case, Identity
from fusion.helper.http_envelope import json_response
from fusion.helper.http_request import get_guid
from fusion.server import Action, FusionAuthAPI, FusionServer
from fusion.server.appkeys import CASE_API

READ_REPORT = Action("read_report")
ADD_NOTE = Action("add_note", change=True)
ARCHIVE = Action("archive", change=True, allow_closed=True)
CLOSED = 'case {} is closed: reopen it with "closed": null first'


async def report(request: web.Request) -> web.Response:
    case = await request.app[CASE_API].authorize_case(request, READ_REPORT)
    return json_response(case)


async def add_note(request: web.Request) -> web.Response:
    case = await request.app[CASE_API].authorize_case(request, ADD_NOTE)
    # The request's own copy: changing it stores nothing.
    case.description = "changed by the route, never stored"
    return json_response({"noted": case.name})


async def archive(request: web.Request) -> web.Response:
    case = await request.app[CASE_API].authorize_case(request, ARCHIVE)
    return json_response({"archived": case.name})


async def link(request: web.Request) -> web.Response:
    """A change of the path's case that reads another one, named by another parameter."""
    case_api = request.app[CASE_API]
    case = await case_api.authorize_case(request, ADD_NOTE)
    other = await case_api.authorize_case(request, READ_REPORT, get_guid(request, "other_guid"))
    return json_response({"case": case.name, "other": other.name})


class FreezingAuth(FusionAuthAPI):
    """The service's hook: nothing is added to a case named "frozen"."""

    async def authorize_impl(self, identity: Identity, action: Action, case: Case | None) -> bool:
        return action is not ADD_NOTE or case is None or case.name != "frozen"


class NotesServer(FusionServer):
    def create_auth_api(self) -> FusionAuthAPI:
        api = super().create_auth_api()
        return FreezingAuth(api.config, api.backend, trusted_proxies=api.trusted_proxies)


@pytest.fixture
async def running(tmp_path: Path, store_url: str, fusion_server: ServerFactory) -> RunningServer:
    server = NotesServer(server_config(tmp_path, shared_store={"url": store_url}))
    server.add_routes(
        [
            web.get("/api/case/{case_guid}/report", report),
            web.post("/api/case/{case_guid}/note", add_note),
            web.post("/api/case/{case_guid}/archive", archive),
            web.post("/api/case/{case_guid}/link/{other_guid}", link),
        ]
    )
    started = await fusion_server(server)
    assert started.app[CASE_API] is server.case_api
    return started


class Callers:
    def __init__(self, running: RunningServer, http_sessions: HTTPSessionFactory) -> None:
        self.running = running
        self.http_sessions = http_sessions
        self.anonymous = http_sessions(running.url)
        self.robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
        self.hub = http_sessions(running.url, headers={"X-Fusion-API-Token": FEDERATION_KEY})

    async def user(self, name: str) -> aiohttp.ClientSession:
        session = self.http_sessions(self.running.url)
        assert (await login(session, name))[0] == 200
        return session

    async def create(self, **fields: Any) -> str:
        status, envelope = await call(self.hub, "POST", "/api/case", json=fields)
        assert status == 200, envelope
        guid: str = envelope["data"]["guid"]
        return guid

    async def close(self, guid: str) -> None:
        closed = {"closed": "2026-12-01T00:00:00Z"}
        status, envelope = await call(self.hub, "PUT", f"/api/case/{guid}", json=closed)
        assert status == 200, envelope


@pytest.fixture
async def callers(running: RunningServer, http_sessions: HTTPSessionFactory) -> Callers:
    return Callers(running, http_sessions)


async def _answer(session: aiohttp.ClientSession, method: str, path: str) -> tuple[int, Any]:
    status, envelope = await call(session, method, path)
    assert envelope["status"] == status, envelope
    return status, envelope["data"] if status == 200 else envelope["message"]


# -- authorize_case ------------------------------------------------------------------------


async def test_authorize_case_refuses_in_the_envelope(callers: Callers) -> None:
    guid = await callers.create(name="intrusion", acs=["analysts"], acs_ro=["readers"])
    report_path, note_path = f"/api/case/{guid}/report", f"/api/case/{guid}/note"
    alice, bob, mallory = [await callers.user(name) for name in ("alice", "bob", "mallory")]

    assert await _answer(callers.anonymous, "GET", report_path) == (
        401,
        "authentication required",
    )
    for bad in ("not-a-guid", guid.upper()):
        assert await _answer(alice, "GET", f"/api/case/{bad}/report") == (
            400,
            "invalid GUID for case_guid: expected lower-case 8-4-4-4-12 hex",
        )
    unknown = str(uuid4())
    assert await _answer(alice, "POST", f"/api/case/{unknown}/note") == (
        404,
        f"case {unknown} not found",
    )
    assert await _answer(mallory, "GET", report_path) == (403, "access to this case denied")
    # Read-only access reads, and may not change.
    status, data = await _answer(bob, "GET", report_path)
    assert (status, data["guid"], data["name"]) == (200, guid, "intrusion")
    assert await _answer(bob, "POST", note_path) == (403, "read-only access to this case")
    assert await _answer(alice, "POST", note_path) == (200, {"noted": "intrusion"})

    # What the route changed on its copy was not stored.
    status, data = await _answer(alice, "GET", f"/api/case/{guid}")
    assert (status, data["description"]) == (200, "")

    # The service's authorize_impl.
    frozen = await callers.create(name="frozen", acs=["analysts"])
    assert await _answer(alice, "POST", f"/api/case/{frozen}/note") == (403, "not authorized")
    assert (await _answer(alice, "GET", f"/api/case/{frozen}/report"))[0] == 200

    # A second case, by another path parameter.
    assert await _answer(alice, "POST", f"/api/case/{guid}/link/{frozen}") == (
        200,
        {"case": "intrusion", "other": "frozen"},
    )
    assert await _answer(alice, "POST", f"/api/case/{guid}/link/{unknown}") == (
        404,
        f"case {unknown} not found",
    )
    assert await _answer(alice, "POST", f"/api/case/{guid}/link/x") == (
        400,
        "invalid GUID for other_guid: expected lower-case 8-4-4-4-12 hex",
    )


async def test_authorize_case_applies_the_closed_case_rule(callers: Callers) -> None:
    guid = await callers.create(name="done", acs=["analysts"])
    alice = await callers.user("alice")
    await callers.close(guid)
    # Reads, and actions allowed on closed cases, pass; a change does not, federation included.
    assert (await _answer(alice, "GET", f"/api/case/{guid}/report"))[0] == 200
    assert await _answer(alice, "POST", f"/api/case/{guid}/archive") == (200, {"archived": "done"})
    for session in (alice, callers.hub):
        assert await _answer(session, "POST", f"/api/case/{guid}/note") == (
            403,
            CLOSED.format(guid),
        )


async def test_authorize_case_audits_each_decision_once(
    callers: Callers, caplog: pytest.LogCaptureFixture
) -> None:
    robot = callers.robot
    guid = await callers.create(name="audited", acs=["robots"])
    other = await callers.create(name="other", acs=["analysts"])
    unknown = str(uuid4())
    with caplog.at_level(logging.INFO, logger="fusion.audit"):
        assert (await _answer(robot, "GET", f"/api/case/{guid}/report"))[0] == 200
        assert (await _answer(robot, "POST", f"/api/case/{guid}/note"))[0] == 200
        assert (await _answer(robot, "GET", f"/api/case/{other}/report"))[0] == 403
        # Not decisions on a case: no record.
        assert (await _answer(robot, "GET", f"/api/case/{unknown}/report"))[0] == 404
        assert (await _answer(robot, "GET", "/api/case/x/report"))[0] == 400
        assert (await _answer(callers.anonymous, "GET", f"/api/case/{guid}/report"))[0] == 401
        await callers.close(guid)
        assert (await _answer(robot, "POST", f"/api/case/{guid}/note"))[0] == 403
        assert (await _answer(robot, "POST", f"/api/case/{guid}/archive"))[0] == 200
    audits = audit_records(caplog)
    assert [(a["who"], a["action"], a["granted"], a["case_guid"]) for a in audits] == [
        ("robot", "read_report", True, guid),
        ("robot", "add_note", True, guid),
        ("robot", "read_report", False, other),
        ("hub", "update_case", True, guid),
        ("robot", "add_note", False, guid),
        ("robot", "archive", True, guid),
    ]
    assert [a["context"] for a in audits if not a["granted"]] == [
        {"reason": "access to this case denied"},
        {"reason": CLOSED.format(guid)},
    ]
    assert all(a["client_ip"] == "127.0.0.1" for a in audits)


# -- the closed-case rule on the case routes ------------------------------------------------


async def test_the_case_routes_apply_the_closed_case_rule(
    callers: Callers, caplog: pytest.LogCaptureFixture
) -> None:
    guid = await callers.create(name="closing", acs=["analysts", "admins"])
    path = f"/api/case/{guid}"
    alice, carol = await callers.user("alice"), await callers.user("carol")
    await callers.close(guid)
    async with alice.get(path) as response:
        etag = response.headers["ETag"]
        stored = (await response.json())["data"]

    with caplog.at_level(logging.INFO, logger="fusion.audit"):
        for session in (alice, callers.hub):
            status, envelope = await call(session, "PUT", path, json={"name": "renamed"})
            assert (status, envelope) == (403, {"status": 403, "message": CLOSED.format(guid)})
        # Closing it again is a change of a closed case too.
        closed = {"closed": "2026-12-02T00:00:00Z"}
        assert (await call(alice, "PUT", path, json=closed))[0] == 403
        next_guid = str(uuid4())
        status, envelope = await call(callers.hub, "PUT", f"{path}/attach/{next_guid}")
        assert (status, envelope["message"]) == (403, CLOSED.format(guid))
    refusals = [a for a in audit_records(caplog) if not a["granted"]]
    assert [(a["who"], a["action"], a["case_guid"], a["context"]) for a in refusals] == [
        ("alice", "update_case", guid, {"reason": CLOSED.format(guid)}),
        ("hub", "update_case", guid, {"reason": CLOSED.format(guid)}),
        ("alice", "update_case", guid, {"reason": CLOSED.format(guid)}),
        (
            "hub",
            "attach_case",
            guid,
            {"case_guid": guid, "next_case_guid": next_guid, "reason": CLOSED.format(guid)},
        ),
    ]
    # Nothing stored changed, and the case did not move.
    async with alice.get(path) as response:
        assert response.headers["ETag"] == etag
        assert (await response.json())["data"] == stored
    assert (await call(alice, "GET", f"/api/case/{next_guid}"))[0] == 404

    # The update that reopens it is accepted, with other changes in the same request.
    status, envelope = await call(alice, "PUT", path, json={"closed": None, "name": "reopened"})
    assert (status, envelope["data"]["closed"], envelope["data"]["name"]) == (200, None, "reopened")
    # Delete is accepted on a closed case.
    await callers.close(guid)
    status, envelope = await call(carol, "DELETE", path)
    assert (status, envelope) == (200, {"status": 200})
    assert (await call(alice, "GET", path))[0] == 404
