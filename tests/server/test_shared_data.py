"""Data shared between requests cannot be changed by one of them.

API-key identities and stored cases are handed to service hooks; a hook that
changes what it was given must not change what another request sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    ServerFactory,
    call,
    login,
    server_config,
)

from fusion.concept import Case, Identity, Priority
from fusion.server import FusionServer
from fusion.server.auth import Action, FusionAuthAPI
from fusion.server.auth.config import FusionAuthAPIConfig
from fusion.server.storage import SQLiteStorage


class TimelineCase(Case, kw_only=True):
    priority: Priority = Priority.LOW


class MeddlingAuthAPI(FusionAuthAPI):
    """A service hook that changes the case it is shown, and tries the identity."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.identity_refusals: list[str] = []
        self.meddled = 0

    async def authorize_impl(self, identity: Identity, action: Action, case: Case | None) -> bool:
        if case is not None and action.name == "retrieve_case" and not self.meddled:
            # Its own request's copy: the answer to this request shows it, no other.
            case.acs.add("mallory")
            case.name = "changed by a hook"
            self.meddled += 1
        try:
            identity.groups.add("admins")  # type: ignore[attr-defined]
        except AttributeError as exc:
            self.identity_refusals.append(type(exc).__name__)
        return True


class MeddlingServer(FusionServer):
    def create_auth_api(self) -> FusionAuthAPI:
        config = self.config.auth if self.config.auth is not None else FusionAuthAPIConfig()
        return MeddlingAuthAPI(config)


async def test_a_hook_changing_what_it_was_given_changes_nothing_shared(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    server = MeddlingServer(server_config(tmp_path))
    running = await fusion_server(server)
    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, body = await call(robot, "POST", "/api/case", json={"name": "kept", "acs": ["robots"]})
    assert status == 200, body
    guid = body["data"]["guid"]
    status, body = await call(robot, "GET", f"/api/case/{guid}")
    assert (body["data"]["name"], body["data"]["acs"]) == (
        "changed by a hook",
        ["mallory", "robots"],
    )
    for _ in range(3):
        status, body = await call(robot, "GET", f"/api/case/{guid}")
        assert status == 200, body
        assert (body["data"]["name"], body["data"]["acs"]) == ("kept", ["robots"])
    mallory = http_sessions(running.url)
    assert (await login(mallory, "mallory"))[0] == 200
    assert (await call(mallory, "GET", f"/api/case/{guid}"))[0] == 403
    # The key's identity is frozen: the hook could not give it a group.
    status, body = await call(robot, "GET", "/api/auth/is_logged")
    assert body["data"] == {"username": "robot", "groups": ["robots"]}
    assert isinstance(server.auth_api, MeddlingAuthAPI)
    assert set(server.auth_api.identity_refusals) == {"AttributeError"}
    status, body = await call(robot, "DELETE", f"/api/case/{guid}")
    assert status == 200


@pytest.mark.parametrize("source", ["key", "session"])
async def test_identities_of_requests_are_frozen(
    source: str, tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    running = await fusion_server(server_config(tmp_path))
    assert running.server is not None
    auth = running.server.auth_api
    assert auth is not None
    headers = {"X-Fusion-API-Token": ROBOT_KEY} if source == "key" else {}
    session = http_sessions(running.url, headers=headers)
    if source == "session":
        assert (await login(session, "alice"))[0] == 200
    assert (await call(session, "GET", "/api/auth/is_logged"))[0] == 200
    identities = await auth.storage.enumerate_identities()
    assert identities
    for identity in identities:
        assert isinstance(identity.groups, frozenset)
        with pytest.raises(AttributeError):
            identity.username = "x"  # type: ignore[misc]


async def test_a_subclass_served_over_rows_its_parent_stored(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    async with SQLiteStorage(tmp_path / "data") as parent:
        stored = Case(name="stored by the parent", acs={"robots"})
        await parent.create_case(stored)
    config = server_config(tmp_path / "data")
    running = await fusion_server(FusionServer(config, case_type=TimelineCase))
    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, body = await call(robot, "GET", f"/api/case/{stored.guid}")
    assert status == 200, body
    expected = TimelineCase(**{f: getattr(stored, f) for f in Case.__struct_fields__}).to_dict()
    assert body["data"] == expected
    assert body["data"]["priority"] == "low"
    assert body["count"] == len(expected) == len(TimelineCase.__struct_fields__)
    status, listed = await call(robot, "GET", "/api/cases")
    assert listed["data"] == [expected]
