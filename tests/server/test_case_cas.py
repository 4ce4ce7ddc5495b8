"""Read-modify-write of a case is atomic: a version per stored case, compare-and-swap.

The finding: ``PUT /api/case/{guid}`` read the case, applied the changes and
wrote the whole document back with no version check, so while bob kept
updating a case, alice's removal of bob's group from ``acs`` answered 200
and was then undone by one of bob's updates. Here the same race runs over
real sockets in one server process and across two ``fusion-server serve``
replicas on one SQLite file; writers that use ``If-Match`` (the ETag of
``GET``) increment a counter concurrently without losing a step; the
storage's compare-and-swap and its schema migration are tested directly.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    RunningServer,
    ServerFactory,
    ServerProcess,
    call,
    login,
    server_config,
    server_config_dict,
    write_config,
)

from fusion.concept import Case
from fusion.server import FusionCaseAPI, FusionServer
from fusion.server.case import CaseContext
from fusion.server.storage import CaseConflictError, SQLiteStorage, VersionedCase

TRIALS = 10
"""Races per test: the old code lost alice's removal in 29 of 30 trials."""
BOB_WORKERS = 4
"""bob's concurrent connections, each updating the case in a loop."""
WRITERS = 12
"""Concurrent If-Match writers of one case."""


# -- the race of the finding, over HTTP ----------------------------------------------


async def _bob_updates(
    bob: aiohttp.ClientSession,
    path: str,
    index: int,
    successes: list[int],
    started: asyncio.Event,
    removed: asyncio.Event,
) -> int:
    """PUTs until refused or until one PUT sent after alice's removal answered; its status."""
    count = 0
    while True:
        sent_after_removal = removed.is_set()
        changes = {"description": f"bob {index} {count}"}
        status, envelope = await call(bob, "PUT", path, json=changes)
        count += 1
        assert status in (200, 403, 404), envelope
        if status == 200:
            successes.append(1)
            if len(successes) >= 2 * BOB_WORKERS:
                started.set()
        if sent_after_removal or status != 200:
            return status


async def _removal_wins(
    alice: aiohttp.ClientSession, bobs: list[aiohttp.ClientSession], reader: aiohttp.ClientSession
) -> None:
    """One trial: alice removes bob's group while bob keeps updating; her change sticks."""
    status, envelope = await call(
        alice, "POST", "/api/case", json={"name": "race", "acs": ["analysts", "readers"]}
    )
    assert status == 200, envelope
    path = f"/api/case/{envelope['data']['guid']}"
    successes: list[int] = []
    started, removed = asyncio.Event(), asyncio.Event()
    workers = [
        asyncio.create_task(_bob_updates(bob, path, index, successes, started, removed))
        for index, bob in enumerate(bobs)
    ]
    try:
        async with asyncio.timeout(60):
            # bob's updates are flowing: alice removes his group in the middle of them.
            await started.wait()
            status, envelope = await call(alice, "PUT", path, json={"acs": ["analysts"]})
            assert (status, envelope["data"]["acs"]) == (200, ["analysts"])
            removed.set()
            finals = await asyncio.gather(*workers)
    finally:
        for worker in workers:
            worker.cancel()
    # Every PUT bob sent after alice's 200 was refused ...
    assert set(finals) <= {403, 404}, finals
    # ... and none of the ones in flight resurrected his group.
    for session in (alice, reader):
        status, envelope = await call(session, "GET", path)
        assert (status, envelope["data"]["acs"]) == (200, ["analysts"]), envelope


@pytest.fixture
async def server(tmp_path: Path, store_url: str, fusion_server: ServerFactory) -> RunningServer:
    return await fusion_server(server_config(tmp_path, shared_store={"url": store_url}))


async def _logged_in(http_sessions: HTTPSessionFactory, url: str, username: str) -> Any:
    session = http_sessions(url)
    assert (await login(session, username))[0] == 200
    return session


async def test_removal_of_bobs_group_wins_over_his_concurrent_updates(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    alice = await _logged_in(http_sessions, server.url, "alice")
    bobs = [await _logged_in(http_sessions, server.url, "bob") for _ in range(BOB_WORKERS)]
    for _ in range(TRIALS):
        await _removal_wins(alice, bobs, alice)


async def _increment(session: aiohttp.ClientSession, path: str, marker: str) -> int:
    """Append ``marker`` to the description with If-Match, retrying on 412; returns tries."""
    tries = 0
    while True:
        tries += 1
        async with session.get(path) as response:
            assert response.status == 200
            tag = response.headers["ETag"]
            description = (await response.json())["data"]["description"]
        async with session.put(
            path, json={"description": f"{description} {marker}"}, headers={"If-Match": tag}
        ) as response:
            envelope = await response.json()
            if response.status == 200:
                assert response.headers["ETag"] == f'"{int(tag.strip(chr(34))) + 1}"'
                return tries
            assert (response.status, envelope["status"]) == (412, 412), envelope


async def _concurrent_increments(robots: list[aiohttp.ClientSession]) -> None:
    status, envelope = await call(
        robots[0], "POST", "/api/case", json={"name": "counter", "acs": ["robots"]}
    )
    assert status == 200, envelope
    path = f"/api/case/{envelope['data']['guid']}"
    markers = [f"w{index}" for index in range(WRITERS)]
    async with asyncio.timeout(120):
        await asyncio.gather(
            *(_increment(robots[index % len(robots)], path, m) for index, m in enumerate(markers))
        )
    for robot in robots:
        async with robot.get(path) as response:
            envelope = await response.json()
            # Created at 1, one version per successful write: no step was lost.
            assert response.headers["ETag"] == f'"{WRITERS + 1}"'
        assert sorted(envelope["data"]["description"].split()) == sorted(markers)


async def test_if_match_writers_lose_no_update(
    server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    robots = [
        http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY}) for _ in range(4)
    ]
    await _concurrent_increments(robots)


# -- ETag and If-Match ------------------------------------------------------------------


async def test_etag_and_if_match(server: RunningServer, http_sessions: HTTPSessionFactory) -> None:
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(robot, "POST", "/api/case", json={"acs": ["robots"]})
    path = f"/api/case/{envelope['data']['guid']}"
    async with robot.get(path) as response:
        assert response.headers["ETag"] == '"1"'
        original = (await response.json())["data"]
    # Stale, weak, malformed or someone else's tag: 412 in the envelope, nothing changed.
    for value in ('"2"', 'W/"1"', "1", '"0", "7"'):
        for method in ("PUT", "DELETE"):
            kwargs: dict[str, Any] = {"headers": {"If-Match": value}}
            if method == "PUT":
                kwargs["json"] = {"name": "refused"}
            status, envelope = await call(robot, method, path, **kwargs)
            assert (status, envelope["status"]) == (412, 412), (value, method, envelope)
            assert envelope["message"] == (f'case {original["guid"]} is at ETag "1", not {value}')
    async with robot.get(path) as response:
        assert response.headers["ETag"] == '"1"'
        assert (await response.json())["data"] == original
    # A list holding the current tag, or "*", matches; PUT answers the new tag.
    for value, expected in (('"5", "1"', '"2"'), ("*", '"3"'), ('"3"', '"4"')):
        async with robot.put(path, json={"name": value}, headers={"If-Match": value}) as response:
            assert response.status == 200, await response.text()
            assert response.headers["ETag"] == expected
    # Without If-Match nothing changes for a peer: 200, and the tag moves on.
    async with robot.put(path, json={"name": "plain"}) as response:
        assert (response.status, response.headers["ETag"]) == (200, '"5"')
    status, envelope = await call(robot, "DELETE", path, headers={"If-Match": '"4"'})
    assert (status, envelope["status"]) == (412, 412)
    status, envelope = await call(robot, "DELETE", path, headers={"If-Match": '"5"'})
    assert (status, envelope) == (200, {"status": 200})
    status, envelope = await call(robot, "GET", path)
    assert (status, envelope["status"]) == (404, 404)


# -- the retry loop, made deterministic by a hook that plays another replica ------------


class OtherReplicaCaseAPI(FusionCaseAPI[Case]):
    """Before each write, "another replica" changes the stored case behind the API's back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.remove_robots = False

    async def update_case_impl(
        self, ctx: CaseContext, case: Case, *, expected_version: int
    ) -> Case:
        self.calls += 1
        other = await self.storage.retrieve_case(case.guid)
        assert other is not None
        other.tsid = f"other {self.calls}"
        if self.remove_robots:
            other.acs = {"analysts"}
        await self.storage.update_case(other)
        return await super().update_case_impl(ctx, case, expected_version=expected_version)


class OtherReplicaServer(FusionServer):
    def create_case_api(self) -> OtherReplicaCaseAPI:
        assert self.config.case is not None
        return OtherReplicaCaseAPI(self.config.case, self.case_type)


@pytest.fixture
async def raced(tmp_path: Path, fusion_server: ServerFactory) -> tuple[RunningServer, Any]:
    config = server_config(tmp_path, case={"update_attempts": 3})
    server = OtherReplicaServer(config)
    running = await fusion_server(server)
    api = server.case_api
    assert isinstance(api, OtherReplicaCaseAPI)
    return running, api


async def test_a_case_that_keeps_changing_answers_409(
    raced: tuple[RunningServer, OtherReplicaCaseAPI], http_sessions: HTTPSessionFactory
) -> None:
    running, api = raced
    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    _, envelope = await call(robot, "POST", "/api/case", json={"acs": ["robots"]})
    path = f"/api/case/{envelope['data']['guid']}"
    status, envelope = await call(robot, "PUT", path, json={"name": "never stored"})
    assert (status, envelope["status"]) == (409, 409), envelope
    assert "kept changing during 3 attempts" in envelope["message"]
    assert api.calls == 3
    status, envelope = await call(robot, "GET", path)
    # Only "the other replica" wrote: 1 + its 3 writes.
    assert (envelope["data"]["name"], envelope["data"]["tsid"]) == ("", "other 3")


async def test_access_is_checked_again_on_each_attempt(
    raced: tuple[RunningServer, OtherReplicaCaseAPI], http_sessions: HTTPSessionFactory
) -> None:
    running, api = raced
    api.remove_robots = True
    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    _, envelope = await call(robot, "POST", "/api/case", json={"acs": ["robots"]})
    path = f"/api/case/{envelope['data']['guid']}"
    # The first attempt conflicts with the write that removed robots; the retry
    # reads it and refuses: the robot's update cannot put its group back.
    status, envelope = await call(robot, "PUT", path, json={"acs": ["robots", "analysts"]})
    assert (status, envelope["status"]) in ((403, 403), (404, 404)), envelope
    assert api.calls == 1
    alice = http_sessions(running.url)
    assert (await login(alice, "alice"))[0] == 200
    status, envelope = await call(alice, "GET", path)
    assert (status, envelope["data"]["acs"]) == (200, ["analysts"])


# -- two replicas on one SQLite file -------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ...]]:
    data_dir = tmp_path_factory.mktemp("cas-data")
    # Each caller logs in on the replica it talks to: an in-process store is enough.
    path = write_config(data_dir / "server.yml", server_config_dict(data_dir))
    processes = tuple(ServerProcess(["--config", str(path)], cwd=data_dir) for _ in range(2))
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        codes = [process.stop() for process in processes]
    assert codes == [0, 0], [process.output[-2000:] for process in processes]
    for process in processes:
        assert b"Traceback" not in process.output, process.output.decode(errors="replace")


async def test_removal_wins_across_replicas(
    replicas: tuple[ServerProcess, ...], http_sessions: HTTPSessionFactory
) -> None:
    first, second = replicas
    # bob hammers both replicas, alice removes his group through the second.
    alice = await _logged_in(http_sessions, second.url, "alice")
    reader = await _logged_in(http_sessions, first.url, "alice")
    bobs = [
        await _logged_in(http_sessions, (first, second)[index % 2].url, "bob")
        for index in range(BOB_WORKERS)
    ]
    for _ in range(TRIALS):
        await _removal_wins(alice, bobs, reader)


async def test_compare_and_swap_between_two_replicas(
    replicas: tuple[ServerProcess, ...], http_sessions: HTTPSessionFactory
) -> None:
    first, second = (
        http_sessions(process.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
        for process in replicas
    )
    _, envelope = await call(first, "POST", "/api/case", json={"acs": ["robots"]})
    path = f"/api/case/{envelope['data']['guid']}"
    async with first.get(path) as response:
        tag = response.headers["ETag"]
    # Both writers read the same version; the second replica's write lands first.
    async with second.put(path, json={"name": "second"}, headers={"If-Match": tag}) as response:
        assert response.status == 200
        assert response.headers["ETag"] == '"2"'
    async with first.put(path, json={"name": "first"}, headers={"If-Match": tag}) as response:
        assert (response.status, (await response.json())["status"]) == (412, 412)
    for session in (first, second):
        async with session.get(path) as response:
            assert response.headers["ETag"] == '"2"'
            assert (await response.json())["data"]["name"] == "second"
    await _concurrent_increments([first, second, first, second])


# -- the storage contract -------------------------------------------------------------------


def _row(found: VersionedCase[Case] | None) -> tuple[bytes, int] | None:
    return None if found is None else (found.case.to_json(), found.version)


async def test_storage_versions_and_compare_and_swap(tmp_path: Path) -> None:
    async with SQLiteStorage(tmp_path) as one, SQLiteStorage(tmp_path) as other:
        case = Case(name="cas", acs={"robots"})
        await one.create_case(case)
        assert _row(await one.retrieve_versioned_case(case.guid)) == (case.to_json(), 1)
        assert await other.retrieve_versioned_case(uuid4()) is None
        # Another connection (another replica) writes first ...
        theirs = Case.from_dict({**case.to_dict(), "name": "theirs"})
        assert await other.update_case(theirs, expected_version=1) == 2
        # ... so a write that expected version 1 is refused and changes nothing.
        mine = Case.from_dict({**case.to_dict(), "name": "mine"})
        with pytest.raises(CaseConflictError) as caught:
            await one.update_case(mine, expected_version=1)
        assert (caught.value.expected_version, caught.value.stored_version) == (1, 2)
        # The read cache carries the version with the bytes, fresh across connections.
        assert _row(await one.retrieve_versioned_case(case.guid)) == (theirs.to_json(), 2)
        with pytest.raises(CaseConflictError):
            await one.delete_case(case.guid, expected_version=1)
        # Unconditional writes (no expected version) still work and count.
        assert await one.update_case(mine) == 3
        next_guid = uuid4()
        moved = await one.attach_case(case.guid, next_guid)
        assert moved is not None
        assert _row(await other.retrieve_versioned_case(next_guid)) == (moved.to_json(), 4)
        assert await other.delete_case(next_guid, expected_version=4) is True
        assert await other.delete_case(next_guid, expected_version=4) is False


async def test_schema_1_file_is_migrated_and_keeps_its_cases(tmp_path: Path) -> None:
    case = Case(name="from schema 1", acs={"robots"})
    conn = sqlite3.connect(tmp_path / "fusion.sqlite")
    with conn:
        conn.execute("CREATE TABLE cases (guid TEXT PRIMARY KEY NOT NULL, data BLOB NOT NULL)")
        conn.execute(
            "CREATE TABLE identities (username TEXT PRIMARY KEY NOT NULL, data BLOB NOT NULL)"
        )
        conn.execute("INSERT INTO cases VALUES (?, ?)", (str(case.guid), case.to_json()))
        conn.execute("PRAGMA user_version=1")
    conn.close()
    async with SQLiteStorage(tmp_path) as storage:
        assert _row(await storage.retrieve_versioned_case(case.guid)) == (case.to_json(), 1)
        assert await storage.update_case(case, expected_version=1) == 2
    async with SQLiteStorage(tmp_path) as storage:
        assert _row(await storage.retrieve_versioned_case(case.guid)) == (case.to_json(), 2)
    conn = sqlite3.connect(tmp_path / "fusion.sqlite")
    assert conn.execute("PRAGMA user_version").fetchall() == [(2,)]
    conn.close()
