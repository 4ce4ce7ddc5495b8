"""The case routes over real sockets: behaviour, the access matrix and every error status."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import pytest
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

from fusion.concept import Case

CALLERS = ("alice", "bob", "carol", "mallory", "robot", "hub")
"""alice: analysts; bob: readers; carol: admins (delete right); mallory: nobody;
robot: API key, group robots (delete right by username); hub: the federation key."""


class Callers:
    """One HTTP session per caller, logged in or carrying its key."""

    def __init__(self, sessions: dict[str, aiohttp.ClientSession]) -> None:
        self.sessions = sessions

    def __getitem__(self, name: str) -> aiohttp.ClientSession:
        return self.sessions[name]

    async def create(self, who: str = "hub", **fields: Any) -> Case:
        status, envelope = await call(self[who], "POST", "/api/case", json=fields)
        assert status == 200, envelope
        return Case.from_dict(envelope["data"])


@pytest.fixture
async def server(tmp_path: Path, store_url: str, fusion_server: ServerFactory) -> RunningServer:
    return await fusion_server(server_config(tmp_path, shared_store={"url": store_url}))


@pytest.fixture
async def callers(server: RunningServer, http_sessions: HTTPSessionFactory) -> Callers:
    sessions: dict[str, aiohttp.ClientSession] = {}
    for name in ("alice", "bob", "carol", "mallory"):
        sessions[name] = http_sessions(server.url)
        assert (await login(sessions[name], name))[0] == 200
    sessions["robot"] = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    sessions["hub"] = http_sessions(server.url, headers={"X-Fusion-API-Token": FEDERATION_KEY})
    sessions["anonymous"] = http_sessions(server.url)
    return Callers(sessions)


# -- behaviour ------------------------------------------------------------------


async def test_case_life_cycle(callers: Callers) -> None:
    alice = callers["alice"]
    status, envelope = await call(
        alice, "POST", "/api/case", json={"name": "intrusion", "acs": ["analysts"], "extra": 1}
    )
    assert status == 200
    created = envelope["data"]
    assert envelope["count"] == len(created) == 11
    case_guid = created["guid"]
    assert UUID(case_guid).version == 4
    assert created["managed"] is False
    assert created["created"]
    assert created["updated"] is None
    assert "extra" not in created

    status, envelope = await call(alice, "GET", f"/api/case/{case_guid}")
    assert (status, envelope["data"]) == (200, created)

    status, envelope = await call(
        alice,
        "PUT",
        f"/api/case/{case_guid}",
        json={"description": "phishing", "guid": str(uuid4()), "managed": True},
    )
    assert status == 200
    updated = envelope["data"]
    assert updated["description"] == "phishing"
    assert updated["guid"] == case_guid
    assert updated["managed"] is False
    assert updated["created"] == created["created"]
    assert updated["updated"] is not None

    status, envelope = await call(alice, "GET", "/api/cases")
    assert status == 200
    assert [case["guid"] for case in envelope["data"]] == [case_guid]
    assert envelope["count"] == 1

    status, envelope = await call(callers["carol"], "PUT", f"/api/case/{case_guid}", json={})
    assert status == 403
    status, envelope = await call(
        alice, "PUT", f"/api/case/{case_guid}", json={"acs": ["analysts", "admins"]}
    )
    assert status == 200
    status, envelope = await call(callers["carol"], "DELETE", f"/api/case/{case_guid}")
    assert (status, envelope) == (200, {"status": 200})
    status, envelope = await call(alice, "GET", f"/api/case/{case_guid}")
    assert (status, envelope["message"]) == (404, f"case {case_guid} not found")


async def test_create_keeps_a_given_guid_and_refuses_a_taken_one(callers: Callers) -> None:
    case_guid = str(uuid4())
    body = {"guid": case_guid, "name": "given", "created": "2026-01-02T03:04:05Z"}
    status, envelope = await call(callers["alice"], "POST", "/api/case", json=body)
    assert status == 200
    assert envelope["data"]["guid"] == case_guid
    assert envelope["data"]["created"].startswith("2026-01-02T03:04:05")
    status, envelope = await call(callers["alice"], "POST", "/api/case", json=body)
    assert (status, envelope["message"]) == (400, f"case {case_guid} already exists")


async def test_managed_cases_are_those_the_federation_creates(callers: Callers) -> None:
    by_hub = await callers.create("hub", name="federated")
    by_alice = await callers.create("alice", name="local", managed=True)
    assert by_hub.managed is True
    assert by_alice.managed is False


async def test_closed_case_update_rules(callers: Callers) -> None:
    case = await callers.create("alice", name="closing")
    path = f"/api/case/{case.guid}"
    status, envelope = await call(
        callers["alice"], "PUT", path, json={"closed": "2026-11-28T04:00:00+00:00"}
    )
    assert status == 200
    assert envelope["data"]["closed"] is not None
    status, envelope = await call(callers["alice"], "PUT", path, json={"name": "renamed"})
    assert (status, envelope["message"]) == (
        403,
        f'case {case.guid} is closed: reopen it with "closed": null first',
    )
    status, envelope = await call(callers["alice"], "GET", path)
    assert envelope["data"]["name"] == "closing"
    status, envelope = await call(
        callers["alice"], "PUT", path, json={"closed": None, "name": "reopened"}
    )
    assert status == 200
    assert (envelope["data"]["closed"], envelope["data"]["name"]) == (None, "reopened")


async def test_attach_moves_the_case_for_the_federation_only(callers: Callers) -> None:
    case = await callers.create("hub", name="to attach", acs=["analysts"])
    next_guid = uuid4()
    path = f"/api/case/{case.guid}/attach/{next_guid}"
    for name in ("alice", "bob", "carol", "mallory", "robot"):
        status, envelope = await call(callers[name], "PUT", path)
        assert (name, status, envelope["message"]) == (
            name,
            403,
            "only the federation key may do this",
        )
    assert (await call(callers["anonymous"], "PUT", path))[0] == 401
    status, envelope = await call(callers["hub"], "PUT", path)
    assert status == 200
    assert envelope["data"]["guid"] == str(next_guid)
    assert envelope["data"]["name"] == "to attach"
    assert (await call(callers["alice"], "GET", f"/api/case/{case.guid}"))[0] == 404
    assert (await call(callers["alice"], "GET", f"/api/case/{next_guid}"))[0] == 200
    # Unknown source, taken target, bad GUIDs.
    status, _ = await call(callers["hub"], "PUT", f"/api/case/{uuid4()}/attach/{uuid4()}")
    assert status == 404
    other = await callers.create("hub", name="other")
    status, envelope = await call(
        callers["hub"], "PUT", f"/api/case/{other.guid}/attach/{next_guid}"
    )
    assert (status, envelope["message"]) == (400, f"case {next_guid} already exists")
    status, envelope = await call(callers["hub"], "PUT", f"/api/case/{other.guid}/attach/nope")
    assert (status, envelope["message"]) == (
        400,
        "invalid GUID for next_case_guid: expected lower-case 8-4-4-4-12 hex",
    )


# -- the access matrix ----------------------------------------------------------------

RESTRICTED = {"acs": ["analysts"], "acs_ro": ["readers"]}

# caller -> (GET, PUT, DELETE) statuses on a case restricted to analysts (rw) and readers (ro).
RESTRICTED_MATRIX = {
    "alice": (200, 200, 403),  # acs member, no delete right
    "bob": (200, 403, 403),  # acs_ro member
    "carol": (403, 403, 403),  # delete right but outsider
    "mallory": (403, 403, 403),  # outsider
    "robot": (403, 403, 403),  # robot key, outsider
    "hub": (200, 200, 200),  # federation key
    "anonymous": (401, 401, 401),
}

# On an open case (empty acs and acs_ro) everyone authenticated reads and changes;
# deleting needs the delete right.
OPEN_MATRIX = {
    "alice": (200, 200, 403),
    "bob": (200, 200, 403),
    "carol": (200, 200, 200),
    "mallory": (200, 200, 403),
    "robot": (200, 200, 200),
    "hub": (200, 200, 200),
    "anonymous": (401, 401, 401),
}


@pytest.mark.parametrize(
    ("acl", "matrix"), [(RESTRICTED, RESTRICTED_MATRIX), ({}, OPEN_MATRIX)], ids=["acl", "open"]
)
async def test_access_matrix(
    callers: Callers, acl: dict[str, list[str]], matrix: dict[str, tuple[int, int, int]]
) -> None:
    for name, (get_status, put_status, delete_status) in matrix.items():
        case = await callers.create("hub", name=f"case of {name}", **acl)
        path = f"/api/case/{case.guid}"
        session = callers[name]
        status, envelope = await call(session, "GET", path)
        assert (name, "GET", status) == (name, "GET", get_status)
        if status == 200:
            assert envelope["data"]["guid"] == str(case.guid)
        else:
            assert "data" not in envelope  # never the content of a refused case
        status, envelope = await call(session, "PUT", path, json={"description": name})
        assert (name, "PUT", status) == (name, "PUT", put_status)
        stored = (await call(callers["hub"], "GET", path))[1]["data"]
        assert stored["description"] == (name if put_status == 200 else "")
        status, envelope = await call(session, "DELETE", path)
        assert (name, "DELETE", status) == (name, "DELETE", delete_status)
        still_there = (await call(callers["hub"], "GET", path))[0]
        assert still_there == (404 if delete_status == 200 else 200)


async def test_delete_right_comes_from_username_or_group(callers: Callers) -> None:
    for name, acs in (("carol", ["admins"]), ("robot", ["robots"])):
        case = await callers.create("hub", name=name, acs=acs)
        status, _ = await call(callers[name], "DELETE", f"/api/case/{case.guid}")
        assert (name, status) == (name, 200)


async def test_enumerate_filters_by_acl(callers: Callers) -> None:
    open_case = await callers.create("hub", name="open")
    restricted = await callers.create("hub", name="restricted", **RESTRICTED)
    robots = await callers.create("hub", name="robots", acs=["robots"])
    expected = {
        "alice": {open_case.guid, restricted.guid},
        "bob": {open_case.guid, restricted.guid},
        "mallory": {open_case.guid},
        "robot": {open_case.guid, robots.guid},
        "hub": {open_case.guid, restricted.guid, robots.guid},
    }
    for name, guids in expected.items():
        status, envelope = await call(callers[name], "GET", "/api/cases")
        assert status == 200
        assert ({UUID(case["guid"]) for case in envelope["data"]}, name) == (guids, name)
        assert envelope["count"] == len(guids)
    assert (await call(callers["anonymous"], "GET", "/api/cases"))[0] == 401


# -- error statuses ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_invalid_guid_is_400(callers: Callers, method: str) -> None:
    for bad in ("nope", "1234", "g" * 36):
        status, envelope = await call(callers["alice"], method, f"/api/case/{bad}", json={})
        message = "invalid GUID for case_guid: expected lower-case 8-4-4-4-12 hex"
        assert (status, envelope) == (400, {"status": 400, "message": message})


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_unknown_case_is_404(callers: Callers, method: str) -> None:
    case_guid = uuid4()
    status, envelope = await call(callers["hub"], method, f"/api/case/{case_guid}", json={})
    assert (status, envelope) == (404, {"status": 404, "message": f"case {case_guid} not found"})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{", "invalid JSON body"),
        (b"[]", "invalid Case"),
        (b'{"acs": "analysts"}', "$.acs"),
        (b'{"guid": "not-a-guid"}', "$.guid"),
        (b'{"created": "2026-01-01T00:00:00"}', "$.created"),
        (b'{"webhooks": ["ftp://example.org/x"]}', "invalid webhook URL"),
        (b'{"webhooks": ["not a url"]}', "invalid webhook URL"),
        (b"", "empty body"),
    ],
)
async def test_invalid_create_bodies_are_400_and_store_nothing(
    callers: Callers, body: bytes, fragment: str
) -> None:
    status, envelope = await call(
        callers["alice"],
        "POST",
        "/api/case",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert status == 400
    assert fragment in envelope["message"]
    assert (await call(callers["hub"], "GET", "/api/cases"))[1]["data"] == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{", "invalid JSON body"),
        (b"[1]", "update body must be a JSON object"),
        (b'{"acs_ro": 3}', "$.acs_ro"),
        (b'{"closed": "yesterday"}', "$.closed"),
        (b'{"webhooks": ["javascript:alert(1)"]}', "invalid webhook URL"),
    ],
)
async def test_invalid_update_bodies_are_400_and_change_nothing(
    callers: Callers, body: bytes, fragment: str
) -> None:
    case = await callers.create("alice", name="stable", acs=["analysts"])
    path = f"/api/case/{case.guid}"
    before = (await call(callers["alice"], "GET", path))[1]["data"]
    status, envelope = await call(
        callers["alice"], "PUT", path, data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert fragment in envelope["message"]
    assert (await call(callers["alice"], "GET", path))[1]["data"] == before


async def test_oversized_bodies_are_413(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    server = await fusion_server(server_config(tmp_path, server={"max_body_size": 1000}))
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    big = {"name": "x" * 2000}
    status, envelope = await call(robot, "POST", "/api/case", json=big)
    assert (status, envelope["status"]) == (413, 413)
    assert "too large" in envelope["message"]

    async def chunked() -> Any:
        yield b'{"name": "'
        for _ in range(20):
            yield b"y" * 100
        yield b'"}'

    status, envelope = await call(
        robot, "POST", "/api/case", data=chunked(), headers={"Content-Type": "application/json"}
    )
    assert (status, envelope["status"]) == (413, 413)
    assert (await call(robot, "GET", "/api/cases"))[1]["data"] == []


async def test_unknown_routes_and_methods_use_the_envelope(callers: Callers) -> None:
    status, envelope = await call(callers["alice"], "GET", "/api/nothing")
    assert (status, envelope["status"]) == (404, 404)
    status, envelope = await call(callers["alice"], "PATCH", "/api/cases")
    assert (status, envelope["status"]) == (405, 405)


async def test_constant_can_forbid_open_cases(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    (tmp_path / "constant.yml").write_text("allow_empty_acs: false\n")
    server = await fusion_server(server_config(tmp_path))
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(robot, "POST", "/api/case", json={"name": "open"})
    assert (status, envelope["status"]) == (400, 400)
    assert "acs must not be empty" in envelope["message"]
    status, _ = await call(robot, "POST", "/api/case", json={"name": "ok", "acs": ["robots"]})
    assert status == 200
    hub = http_sessions(server.url, headers={"X-Fusion-API-Token": FEDERATION_KEY})
    assert (await call(hub, "POST", "/api/case", json={"name": "federated"}))[0] == 200
