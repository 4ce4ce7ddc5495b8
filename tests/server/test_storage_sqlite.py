"""SQLiteStorage against real SQLite files, with a real second process where it matters."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar
from uuid import uuid4

import msgspec
import pytest

from fusion.concept import Case, Identity, Priority
from fusion.server.storage import (
    CaseExistsError,
    CaseNotFoundError,
    FusionStorage,
    SQLiteStorage,
    StorageClosedError,
)


class TimelineCase(Case, kw_only=True):
    """A service's Case subclass with fields of its own."""

    priority: Priority = Priority.LOW
    sources: list[str] = msgspec.field(default_factory=list)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage[TimelineCase]]:
    async with SQLiteStorage(tmp_path, case_type=TimelineCase) as opened:
        yield opened


def run_other_process(data_dir: Path, body: str) -> None:
    """Run ``body`` in a separate Python process holding its own SQLiteStorage on the file."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path
        from uuid import UUID
        from fusion.concept import Case, Identity
        from fusion.server.storage import SQLiteStorage

        async def main(storage: SQLiteStorage) -> None:
        {body}

        async def run() -> None:
            async with SQLiteStorage(Path(sys.argv[1])) as storage:
                await main(storage)

        asyncio.run(run())
        """
    ).format(body=textwrap.indent(textwrap.dedent(body), "    "))
    result = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# -- lifecycle -------------------------------------------------------------------


def test_is_a_fusion_storage(tmp_path: Path) -> None:
    assert isinstance(SQLiteStorage(tmp_path), FusionStorage)


@pytest.mark.parametrize("filename", ["", "../escape.sqlite", "sub/fusion.sqlite"])
def test_filename_must_be_bare(tmp_path: Path, filename: str) -> None:
    with pytest.raises(ValueError, match="bare file name"):
        SQLiteStorage(tmp_path, filename=filename)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous must be one of"):
        SQLiteStorage(tmp_path, synchronous="OFF; DROP TABLE cases")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="busy_timeout"):
        SQLiteStorage(tmp_path, busy_timeout=-1)


async def test_data_dir_as_text(tmp_path: Path) -> None:
    async with SQLiteStorage(str(tmp_path)) as storage:
        case = Case()
        await storage.create_case(case)
        assert await storage.retrieve_case(case.guid) == case
    assert (tmp_path / "fusion.sqlite").is_file()


async def test_use_before_startup_is_a_clear_error(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path)
    with pytest.raises(StorageClosedError, match="not started"):
        await storage.retrieve_case(uuid4())
    with pytest.raises(StorageClosedError, match="not started"):
        await storage.create_case(Case())


async def test_use_after_shutdown_is_a_clear_error(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path)
    await storage.startup()
    await storage.shutdown()
    await storage.shutdown()  # twice is harmless
    with pytest.raises(StorageClosedError):
        await storage.enumerate_cases()


async def test_startup_creates_data_dir_in_wal_mode(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    async with SQLiteStorage(data_dir, filename="service.db") as storage:
        await storage.create_case(Case(name="x"))
        assert storage.path == data_dir / "service.db"
    conn = sqlite3.connect(data_dir / "service.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM cases").fetchone() == (1,)
    finally:
        conn.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "fusion.sqlite")
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version 99"):
        await SQLiteStorage(tmp_path).startup()


# -- cases ------------------------------------------------------------------------


async def test_create_retrieve_roundtrip_with_extra_fields(storage: SQLiteStorage) -> None:
    case = TimelineCase(
        name="incident",
        description="ransomware",
        acs={"analysts"},
        acs_ro={"auditors"},
        webhooks=["https://hooks.example/1"],
        tsid="TS-1",
        priority=Priority.HIGH,
        sources=["edr", "proxy"],
    )
    await storage.create_case(case)
    loaded = await storage.retrieve_case(case.guid)
    assert isinstance(loaded, TimelineCase)
    assert loaded == case
    assert loaded.priority is Priority.HIGH
    assert (await storage.retrieve_versioned_case(case.guid)) == (case, 1)


async def test_extra_fields_survive_a_restart(tmp_path: Path) -> None:
    case = TimelineCase(name="kept", priority=Priority.MEDIUM, sources=["a"])
    async with SQLiteStorage(tmp_path, case_type=TimelineCase) as storage:
        await storage.create_case(case)
    async with SQLiteStorage(tmp_path, case_type=TimelineCase) as storage:
        assert await storage.retrieve_case(case.guid) == case
        assert await storage.enumerate_cases() == [case]


async def test_retrieve_unknown_case(storage: SQLiteStorage) -> None:
    assert await storage.retrieve_case(uuid4()) is None
    assert await storage.retrieve_versioned_case(uuid4()) is None


async def test_create_existing_guid_is_refused_and_keeps_the_first(
    storage: SQLiteStorage,
) -> None:
    first = TimelineCase(name="first")
    await storage.create_case(first)
    with pytest.raises(CaseExistsError, match=str(first.guid)) as info:
        await storage.create_case(TimelineCase(guid=first.guid, name="second"))
    assert info.value.case_guid == first.guid
    assert isinstance(info.value, ValueError)
    assert await storage.retrieve_case(first.guid) == first


async def test_concurrent_creates_of_one_guid_one_wins(storage: SQLiteStorage) -> None:
    guid = uuid4()
    results = await asyncio.gather(
        *(storage.create_case(TimelineCase(guid=guid, name=f"n{i}")) for i in range(20)),
        return_exceptions=True,
    )
    winners = [i for i, result in enumerate(results) if result is None]
    assert len(winners) == 1
    assert all(isinstance(r, CaseExistsError) for r in results if r is not None)
    stored = await storage.retrieve_case(guid)
    assert stored is not None
    assert stored.name == f"n{winners[0]}"


async def test_concurrent_creates_from_two_storages_on_one_file(tmp_path: Path) -> None:
    guid = uuid4()
    async with SQLiteStorage(tmp_path) as one, SQLiteStorage(tmp_path) as two:
        results = await asyncio.gather(
            *((one if i % 2 else two).create_case(Case(guid=guid, name=str(i))) for i in range(10)),
            return_exceptions=True,
        )
        assert sum(result is None for result in results) == 1
        assert await one.retrieve_case(guid) == await two.retrieve_case(guid)


async def test_update_replaces_the_whole_case(storage: SQLiteStorage) -> None:
    case = TimelineCase(name="before", sources=["a"])
    await storage.create_case(case)
    await storage.retrieve_case(case.guid)  # warm the cache
    case.update({"name": "after", "sources": ["b", "c"], "acs": ["team"]})
    await storage.update_case(case)
    loaded = await storage.retrieve_case(case.guid)
    assert loaded == case
    assert isinstance(loaded, TimelineCase)
    assert loaded.sources == ["b", "c"]
    assert loaded.updated is not None


async def test_update_unknown_case(storage: SQLiteStorage) -> None:
    case = TimelineCase()
    with pytest.raises(CaseNotFoundError, match=f"case {case.guid} not found") as info:
        await storage.update_case(case)
    assert isinstance(info.value, KeyError)
    assert str(info.value) == f"case {case.guid} not found"
    assert await storage.retrieve_case(case.guid) is None


async def test_delete(storage: SQLiteStorage) -> None:
    case = TimelineCase()
    await storage.create_case(case)
    assert await storage.retrieve_case(case.guid) is not None
    assert await storage.delete_case(case.guid) is True
    assert await storage.retrieve_case(case.guid) is None
    assert await storage.delete_case(case.guid) is False
    assert await storage.enumerate_cases() == []


async def test_enumerate_in_creation_order(storage: SQLiteStorage) -> None:
    assert await storage.enumerate_cases() == []
    cases = [TimelineCase(name=str(i)) for i in range(5)]
    for case in cases:
        await storage.create_case(case)
    assert await storage.enumerate_cases() == cases
    await storage.delete_case(cases[1].guid)
    assert await storage.enumerate_cases() == [cases[0], *cases[2:]]


async def test_returned_cases_are_copies(storage: SQLiteStorage) -> None:
    case = TimelineCase(name="orig", acs={"a"}, sources=["s"])
    await storage.create_case(case)
    loaded = await storage.retrieve_case(case.guid)
    assert loaded is not None
    loaded.name = "mutated"
    loaded.acs.add("intruder")
    assert isinstance(loaded, TimelineCase)
    loaded.sources.append("x")
    listed = await storage.enumerate_cases()
    listed[0].acs.clear()
    assert await storage.retrieve_case(case.guid) == case
    assert await storage.enumerate_cases() == [case]
    # The caller's object stays theirs too: storing copies, not references.
    case.name = "changed after create"
    reloaded = await storage.retrieve_case(case.guid)
    assert reloaded is not None
    assert reloaded.name == "orig"


async def test_a_small_cache_still_answers_right(tmp_path: Path) -> None:
    async with SQLiteStorage(tmp_path, cache_size=2) as storage:
        cases = [Case(name=str(i)) for i in range(6)]
        for case in cases:
            await storage.create_case(case)
        for _ in range(2):
            for case in cases:
                assert await storage.retrieve_case(case.guid) == case
            assert await storage.retrieve_case(uuid4()) is None


def test_cache_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache_size"):
        SQLiteStorage(tmp_path, cache_size=0)


async def test_undecodable_row_is_a_clear_error(tmp_path: Path) -> None:
    guid = uuid4()
    async with SQLiteStorage(tmp_path) as storage:
        await storage.create_case(Case(guid=guid))
    conn = sqlite3.connect(tmp_path / "fusion.sqlite")
    conn.execute("UPDATE cases SET data = ? WHERE guid = ?", (b'{"guid": 42}', str(guid)))
    conn.commit()
    conn.close()
    async with SQLiteStorage(tmp_path) as storage:
        with pytest.raises(sqlite3.DataError, match="stored case cannot be decoded"):
            await storage.retrieve_case(guid)


# -- attach -------------------------------------------------------------------------


async def test_attach_moves_the_case(storage: SQLiteStorage) -> None:
    case = TimelineCase(name="local", sources=["edr"], priority=Priority.HIGH)
    await storage.create_case(case)
    await storage.retrieve_case(case.guid)  # cached under the old guid
    next_guid = uuid4()
    moved = await storage.attach_case(case.guid, next_guid)
    assert isinstance(moved, TimelineCase)
    assert moved.guid == next_guid
    assert moved.name == "local"
    assert moved.sources == ["edr"]
    assert moved.created == case.created
    assert await storage.retrieve_case(case.guid) is None
    assert await storage.retrieve_case(next_guid) == moved
    assert [c.guid for c in await storage.enumerate_cases()] == [next_guid]


async def test_attach_unknown_case(storage: SQLiteStorage) -> None:
    assert await storage.attach_case(uuid4(), uuid4()) is None
    assert await storage.enumerate_cases() == []


async def test_attach_onto_a_taken_guid_changes_nothing(storage: SQLiteStorage) -> None:
    one, two = TimelineCase(name="one"), TimelineCase(name="two")
    await storage.create_case(one)
    await storage.create_case(two)
    with pytest.raises(CaseExistsError, match=str(two.guid)):
        await storage.attach_case(one.guid, two.guid)
    assert await storage.enumerate_cases() == [one, two]


async def test_attach_onto_itself_is_a_no_op(storage: SQLiteStorage) -> None:
    case = TimelineCase(name="same")
    await storage.create_case(case)
    assert await storage.attach_case(case.guid, case.guid) == case
    assert await storage.enumerate_cases() == [case]


# -- identities -------------------------------------------------------------------------


async def test_identities_upsert_by_username(storage: SQLiteStorage) -> None:
    assert await storage.enumerate_identities() == []
    await storage.store_identity(Identity(username="zoe", groups=frozenset({"analysts"})))
    await storage.store_identity(Identity(username="adam"))
    await storage.store_identity(Identity(username="zoe", groups=frozenset({"admins", "auditors"})))
    await storage.store_identity(Identity(username="zoe", groups=frozenset({"admins", "auditors"})))
    assert await storage.enumerate_identities() == [
        Identity(username="adam"),
        Identity(username="zoe", groups=frozenset({"admins", "auditors"})),
    ]


async def test_identities_survive_a_restart(tmp_path: Path) -> None:
    async with SQLiteStorage(tmp_path) as storage:
        await storage.store_identity(Identity(username="kim", groups=frozenset({"g"})))
    async with SQLiteStorage(tmp_path) as storage:
        assert await storage.enumerate_identities() == [
            Identity(username="kim", groups=frozenset({"g"}))
        ]


async def test_unchanged_identity_is_not_rewritten(storage: SQLiteStorage) -> None:
    identity = Identity(username="robot", groups=frozenset({"bots"}))
    await storage.store_identity(identity)
    version_before = _total_changes_on_disk(storage.path)
    for _ in range(50):
        await storage.store_identity(Identity(username="robot", groups=frozenset({"bots"})))
    assert _total_changes_on_disk(storage.path) == version_before


def _total_changes_on_disk(path: Path) -> bytes:
    # The WAL grows with every commit: its size is a cheap external witness.
    wal = path.with_name(path.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


# -- across processes -----------------------------------------------------------------------


async def test_two_processes_see_each_others_writes(tmp_path: Path) -> None:
    async with SQLiteStorage(tmp_path) as storage:
        kept, changed, deleted = Case(name="kept"), Case(name="before"), Case(name="gone")
        for case in (kept, changed, deleted):
            await storage.create_case(case)
        absent = uuid4()
        # Warm every cache: positive, negative, the full list and identities.
        for case in (kept, changed, deleted):
            assert await storage.retrieve_case(case.guid) == case
        assert await storage.retrieve_case(absent) is None
        assert len(await storage.enumerate_cases()) == 3
        assert await storage.enumerate_identities() == []

        run_other_process(
            tmp_path,
            f"""
            # It sees what we wrote...
            case = await storage.retrieve_case(UUID("{changed.guid}"))
            assert case is not None and case.name == "before", case
            assert len(await storage.enumerate_cases()) == 3
            # ...and writes of its own.
            case.name = "changed by the replica"
            await storage.update_case(case)
            assert await storage.delete_case(UUID("{deleted.guid}"))
            await storage.create_case(Case(guid=UUID("{absent}"), name="new"))
            await storage.store_identity(Identity(username="replica-user"))
            """,
        )

        seen = await storage.retrieve_case(changed.guid)
        assert seen is not None
        assert seen.name == "changed by the replica"
        assert await storage.retrieve_case(deleted.guid) is None
        created = await storage.retrieve_case(absent)
        assert created is not None
        assert created.name == "new"
        assert await storage.retrieve_case(kept.guid) == kept
        assert {c.name for c in await storage.enumerate_cases()} == {
            "kept",
            "changed by the replica",
            "new",
        }
        assert await storage.enumerate_identities() == [Identity(username="replica-user")]


_CONCURRENT_WRITER = """
import asyncio, sys
from pathlib import Path
from uuid import UUID
from fusion.concept import Case, Identity
from fusion.server.storage import CaseExistsError, SQLiteStorage

async def main() -> None:
    async with SQLiteStorage(Path(sys.argv[1]), busy_timeout=30) as storage:
        for i in range(20):
            await storage.create_case(Case(name=sys.argv[2] + "-" + str(i)))
            try:
                await storage.create_case(Case(guid=UUID(sys.argv[3]), name=sys.argv[2]))
            except CaseExistsError:
                pass
            identity = Identity(username="shared", groups=frozenset({sys.argv[2]}))
            await storage.store_identity(identity)

asyncio.run(main())
"""


async def test_several_processes_write_one_fresh_file(tmp_path: Path) -> None:
    # Started together on a file that does not exist yet: WAL switch, schema
    # creation and writes all contend, and busy_timeout must sort them out.
    contested = uuid4()
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CONCURRENT_WRITER,
            str(tmp_path),
            f"p{index}",
            str(contested),
            stderr=asyncio.subprocess.PIPE,
        )
        for index in range(3)
    ]
    for writer in writers:
        _, stderr = await writer.communicate()
        assert writer.returncode == 0, stderr.decode()
    async with SQLiteStorage(tmp_path) as storage:
        cases = await storage.enumerate_cases()
        names = {case.name for case in cases}
        assert len(cases) == 3 * 20 + 1
        assert {f"p{p}-{i}" for p in range(3) for i in range(20)} <= names
        winner = await storage.retrieve_case(contested)
        assert winner is not None
        assert winner.name in {"p0", "p1", "p2"}
        identities = await storage.enumerate_identities()
        assert [identity.username for identity in identities] == ["shared"]


# -- the event loop ------------------------------------------------------------------------------


async def test_loop_is_never_blocked_by_writes(tmp_path: Path) -> None:
    # Every write goes to the writer thread: with that thread held, the loop
    # runs on and nothing is committed; once it goes, everything is.
    async with SQLiteStorage(tmp_path, synchronous="FULL") as storage:
        gate = threading.Event()
        held = storage._started().write_executor.submit(gate.wait, 60)
        cases = [Case(name=str(i)) for i in range(100)]
        batch = asyncio.gather(*(storage.create_case(case) for case in cases))
        try:
            for _ in range(50):
                await asyncio.sleep(0)
            assert not batch.done()
            with sqlite3.connect(storage.path) as outside:
                assert outside.execute("SELECT count(*) FROM cases").fetchone() == (0,)
        finally:
            gate.set()
        await batch
        assert held.result() is True
        assert len(await storage.enumerate_cases()) == 100


async def test_cached_reads_stay_on_the_loop(storage: SQLiteStorage) -> None:
    case = TimelineCase(name="hot")
    await storage.create_case(case)
    await storage.retrieve_case(case.guid)
    # With the reader thread held, a read that hopped to it would wait: cached
    # reads answer all the same. (Their cost is measured in tools/bench.)
    gate = threading.Event()
    storage._started().read_executor.submit(gate.wait, 60)
    try:

        async def reads() -> Case | None:
            for _ in range(200):
                loaded = await storage.retrieve_case(case.guid)
            return loaded

        assert await asyncio.wait_for(reads(), 30) == case
    finally:
        gate.set()


async def test_data_version_is_asked_once_per_loop_iteration(tmp_path: Path) -> None:
    """Cached reads of one iteration share one check; the next iteration asks again
    and sees what another connection committed in between."""
    async with SQLiteStorage(tmp_path) as storage, SQLiteStorage(tmp_path) as replica:
        case = Case(name="v1")
        await storage.create_case(case)
        await storage.retrieve_case(case.guid)
        await asyncio.sleep(0)
        asked: list[str] = []
        storage._started().probe.set_trace_callback(asked.append)
        for _ in range(50):
            found = await storage.retrieve_case(case.guid)
            assert found is not None
            assert found.name == "v1"
        assert asked == ["PRAGMA data_version"]
        case.name = "v2"
        await replica.update_case(case)  # another connection commits (and we yield)
        found = await storage.retrieve_case(case.guid)
        assert found is not None
        assert found.name == "v2"
        assert len(asked) == 2
        # A write of this storage makes its next read look again, whatever the iteration.
        case.name = "v3"
        await storage.update_case(case)
        found = await storage.retrieve_case(case.guid)
        assert found is not None
        assert found.name == "v3"
        assert len(asked) == 3


async def test_read_racing_a_write_never_caches_stale_data(storage: SQLiteStorage) -> None:
    case = Case(name="v0")
    await storage.create_case(case)
    for version in range(1, 30):
        case.name = f"v{version}"
        read = asyncio.ensure_future(storage.retrieve_case(case.guid))
        await storage.update_case(case)
        await read
        loaded = await storage.retrieve_case(case.guid)
        assert loaded is not None
        assert loaded.name == f"v{version}"


_T = TypeVar("_T")


class HeldReads(SQLiteStorage):
    """Holds the result of the next cache-miss read until released.

    This reproduces, deterministically, a slow read that fetched a row just
    before a commit and comes back after another read already saw the commit.
    """

    hold_next = False
    fetched_event: asyncio.Event
    release: asyncio.Event

    async def _read(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        hold, self.hold_next = self.hold_next, False
        result = await super()._read(job)
        if hold:
            self.fetched_event.set()
            await self.release.wait()
        return result

    def arm(self) -> None:
        self.hold_next = True
        self.fetched_event = asyncio.Event()
        self.release = asyncio.Event()


async def test_slow_read_finishing_after_a_commit_is_not_cached(tmp_path: Path) -> None:
    async with HeldReads(tmp_path) as storage:
        case = Case(name="old")
        await storage.create_case(case)
        storage.arm()
        slow = asyncio.create_task(storage.retrieve_case(case.guid))
        await storage.fetched_event.wait()  # it has read "old" and is held

        case.name = "new"
        await storage.update_case(case)
        fresh = await storage.retrieve_case(case.guid)
        assert fresh is not None
        assert fresh.name == "new"

        storage.release.set()
        held = await slow
        assert held is not None
        assert held.name == "old"  # what it read, from before the commit
        later = await storage.retrieve_case(case.guid)
        assert later is not None
        assert later.name == "new"
