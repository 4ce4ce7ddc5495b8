"""SyncTree on real files: per-case directories, state files, pruning."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import msgspec
import pytest

from fusion.concept import ConceptError, UTCDateTime
from fusion.helper.filesystem import UnsafePathError
from fusion.server.storage import SyncState, SyncTree


class TimelineSyncState(SyncState, kw_only=True):
    """What a timeline service remembers per case."""

    cursor: int = 0
    remote_revision: str | None = None
    seen_at: UTCDateTime | None = None


@pytest.fixture
def tree(tmp_path: Path) -> SyncTree[TimelineSyncState]:
    return SyncTree(tmp_path / "sync", TimelineSyncState)


async def test_default_state_when_never_written(tree: SyncTree[TimelineSyncState]) -> None:
    state = await tree.read_state(uuid4())
    assert state == TimelineSyncState()
    assert state.last_sync is None
    assert state.last_error is None
    assert await tree.enumerate_cases() == []


async def test_state_roundtrip_with_service_fields(tree: SyncTree[TimelineSyncState]) -> None:
    case_guid = uuid4()
    seen = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)
    state = TimelineSyncState(cursor=42, remote_revision="r7", seen_at=seen)
    await tree.write_state(case_guid, state)
    assert await tree.read_state(case_guid) == state
    path = tree.state_path(case_guid)
    assert path == (tree.root / str(case_guid) / "state.json").resolve()
    on_disk = msgspec.json.decode(path.read_bytes())
    assert on_disk["cursor"] == 42
    assert datetime.fromisoformat(on_disk["seen_at"]) == seen
    # Only the state file: no temporaries left next to it.
    assert [p.name for p in tree.case_dir(case_guid).iterdir()] == ["state.json"]


async def test_record_success_then_failure(tree: SyncTree[TimelineSyncState]) -> None:
    case_guid = uuid4()
    t1 = datetime(2026, 1, 1, tzinfo=UTC)
    done = await tree.record_success(case_guid, TimelineSyncState(cursor=5), when=t1)
    assert done.last_sync == t1
    assert done.last_attempt == t1
    assert done.last_error is None

    t2 = t1 + timedelta(minutes=5)
    failed = await tree.record_failure(case_guid, TimeoutError("remote did not answer"), when=t2)
    assert failed.last_error == "TimeoutError: remote did not answer"
    assert failed.last_attempt == t2
    assert failed.last_sync == t1  # the last success is kept
    assert failed.cursor == 5  # service fields are kept
    assert await tree.read_state(case_guid) == failed

    again = await tree.record_success(case_guid)
    assert again.last_error is None
    assert again.cursor == 5
    assert again.last_sync is not None
    assert again.last_sync > t2
    assert (await tree.read_state(case_guid)).last_error is None


async def test_record_failure_text_and_bare_exception(tree: SyncTree[TimelineSyncState]) -> None:
    case_guid = uuid4()
    assert (await tree.record_failure(case_guid, "quota exceeded")).last_error == "quota exceeded"
    assert (await tree.record_failure(case_guid, KeyError())).last_error == "KeyError"


async def test_naive_times_are_refused(tree: SyncTree[TimelineSyncState]) -> None:
    naive = datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="timezone-aware"):
        await tree.record_success(uuid4(), when=naive)
    assert await tree.enumerate_cases() == []


async def test_case_directories(tree: SyncTree[TimelineSyncState]) -> None:
    guids = sorted(uuid4() for _ in range(3))
    for guid in guids:
        directory = await tree.ensure_case_dir(guid)
        assert directory.is_dir()
        (directory / "events.jsonl").write_text("{}\n")
    (tree.root / "not-a-case").mkdir()
    assert await tree.enumerate_cases() == guids
    # The service's own files live beside the state file and are not touched by it.
    await tree.record_success(guids[0])
    assert sorted(p.name for p in tree.case_dir(guids[0]).iterdir()) == [
        "events.jsonl",
        "state.json",
    ]


async def test_remove_and_prune(tree: SyncTree[TimelineSyncState]) -> None:
    kept, gone, also_gone = uuid4(), uuid4(), uuid4()
    for guid in (kept, gone, also_gone):
        await tree.record_success(guid)
        (tree.case_dir(guid) / "sub").mkdir()
        (tree.case_dir(guid) / "sub" / "file").write_bytes(b"x")
    assert await tree.remove_case(also_gone) is True
    assert await tree.remove_case(also_gone) is False
    assert sorted(await tree.prune([kept, uuid4()])) == [gone]
    assert await tree.enumerate_cases() == [kept]
    assert await tree.prune([kept]) == []
    assert sorted(p.name for p in tree.root.iterdir()) == [str(kept)]
    assert (await tree.read_state(kept)).last_sync is not None


async def test_prune_on_missing_root(tmp_path: Path) -> None:
    tree = SyncTree(tmp_path / "absent")
    assert await tree.prune([]) == []
    assert await tree.purge_leftovers(older_than=0) == 0


async def test_broken_state_is_a_clear_error(tree: SyncTree[TimelineSyncState]) -> None:
    case_guid = uuid4()
    await tree.write_state(case_guid, TimelineSyncState())
    tree.state_path(case_guid).write_text('{"cursor": "many"}')
    with pytest.raises(ConceptError, match=r"state\.json.*\$\.cursor"):
        await tree.read_state(case_guid)


@pytest.mark.parametrize("name", ["..", "../x", "/tmp", "nope", ""])
async def test_case_names_must_be_guids(tree: SyncTree[TimelineSyncState], name: str) -> None:
    with pytest.raises(UnsafePathError):
        await tree.write_state(name, TimelineSyncState())
    with pytest.raises(UnsafePathError):
        await tree.remove_case(name)
    assert not tree.root.exists()


@pytest.mark.parametrize("filename", ["", "a/b", "../state.json", ".state.json"])
def test_state_filename_is_checked(tmp_path: Path, filename: str) -> None:
    with pytest.raises(ValueError, match="state_filename"):
        SyncTree(tmp_path, state_filename=filename)


async def test_custom_state_filename_and_default_state_type(tmp_path: Path) -> None:
    tree = SyncTree(tmp_path, state_filename="sync.json")
    case_guid = uuid4()
    state = await tree.record_failure(case_guid, "down")
    assert type(state) is SyncState
    assert (tmp_path / str(case_guid) / "sync.json").is_file()


async def test_concurrent_state_writes_leave_one_whole_file(
    tree: SyncTree[TimelineSyncState],
) -> None:
    case_guid = uuid4()
    await asyncio.gather(
        *(tree.write_state(case_guid, TimelineSyncState(cursor=i)) for i in range(50))
    )
    state = await tree.read_state(case_guid)
    assert 0 <= state.cursor < 50
    assert [p.name for p in tree.case_dir(case_guid).iterdir()] == ["state.json"]
