"""SyncTree's named layout on real files: `[<tsid>] <name>/` folders with numbered sections."""

from __future__ import annotations

import os
from pathlib import Path
from uuid import uuid4

import msgspec
import pytest

from fusion.concept import Case
from fusion.server.storage import SyncState, SyncTree, case_folder_name


@pytest.fixture
def tree(tmp_path: Path) -> SyncTree[SyncState]:
    return SyncTree(tmp_path / "sync", layout="named", sections=["evidence", "reports"])


def _visible(root: Path) -> list[str]:
    return sorted(name for name in os.listdir(root) if not name.startswith("."))


def test_case_folder_names() -> None:
    guid = uuid4()
    assert case_folder_name(Case(guid=guid, tsid="INC-042", name="host-7 triage")) == (
        "[INC-042] host-7 triage"
    )
    assert case_folder_name(Case(guid=guid, name="no tsid")) == f"[{guid}] no tsid"
    assert case_folder_name(Case(guid=guid, tsid="T1")) == "[T1]"
    # Separators never split it, controls and reserved characters are replaced.
    assert case_folder_name(Case(guid=guid, tsid="2026/11", name="../../etc")) == (
        "[2026_11] .._.._etc"
    )
    assert case_folder_name(Case(guid=guid, tsid="T", name="a\nb:c\0")) == "[T] a_b_c_"
    long = case_folder_name(Case(guid=guid, tsid="T", name="é" * 300))
    assert len(long.encode()) <= 255


async def test_folder_with_numbered_sections(tree: SyncTree[SyncState]) -> None:
    case = Case(tsid="INC-042", name="host-7 triage")
    folder = await tree.ensure_case_folder(case)
    assert folder == (tree.root / "[INC-042] host-7 triage").resolve()
    assert _visible(folder) == ["01 - evidence", "02 - reports"]
    reports = await tree.ensure_section(case, "reports")
    assert reports == folder / "02 - reports"
    assert reports.is_dir()
    with pytest.raises(ValueError, match="not a section"):
        await tree.ensure_section(case, "other")
    # Only case folders are visible at the root; states live in a hidden directory.
    assert _visible(tree.root) == ["[INC-042] host-7 triage"]
    assert (
        tree.state_path(case.guid)
        == (tree.root / ".fusion-state" / str(case.guid) / "state.json").resolve()
    )
    assert await tree.enumerate_cases() == [case.guid]
    # Again: the same folder, nothing added.
    assert await tree.ensure_case_folder(case) == folder
    assert _visible(tree.root) == ["[INC-042] host-7 triage"]


async def test_a_renamed_case_keeps_its_content(tree: SyncTree[SyncState]) -> None:
    case = Case(tsid="INC-1", name="first name")
    evidence = await tree.ensure_section(case, "evidence")
    (evidence / "disk.img").write_bytes(b"evidence bytes")
    await tree.record_success(case.guid)

    case.name = "second name"
    case.tsid = "INC-2"
    folder = await tree.ensure_case_folder(case)
    assert folder.name == "[INC-2] second name"
    assert _visible(tree.root) == ["[INC-2] second name"]
    assert (folder / "01 - evidence" / "disk.img").read_bytes() == b"evidence bytes"
    state = await tree.read_state(case.guid)
    assert state.folder == "[INC-2] second name"
    assert state.last_sync is not None  # the state survived the rename


async def test_colliding_names_get_distinct_folders(tree: SyncTree[SyncState]) -> None:
    first = Case(tsid="T", name="host")
    second = Case(tsid="T", name="host")
    third = Case(tsid="T", name="host/")  # made safe: "host_"
    one = await tree.ensure_case_folder(first)
    two = await tree.ensure_case_folder(second)
    three = await tree.ensure_case_folder(third)
    assert [one.name, two.name, three.name] == ["[T] host", "[T] host (2)", "[T] host_"]
    (two / "mine").write_text("second's")
    # Stable: each case keeps its folder on later passes, in any order.
    assert await tree.ensure_case_folder(second) == two
    assert await tree.ensure_case_folder(first) == one
    # The first case renamed away: the second keeps "(2)", its content intact.
    first.name = "elsewhere"
    assert (await tree.ensure_case_folder(first)).name == "[T] elsewhere"
    assert await tree.ensure_case_folder(second) == two
    assert (two / "mine").read_text() == "second's"
    # Back to a name free again: it is the first's again.
    first.name = "host"
    assert await tree.ensure_case_folder(first) == one
    # Renamed onto a taken name: numbered, not merged.
    third.name = "host"
    assert (await tree.ensure_case_folder(third)).name == "[T] host (3)"
    assert _visible(tree.root) == ["[T] host", "[T] host (2)", "[T] host (3)"]


async def test_an_entry_not_made_by_the_tree_is_never_taken(tree: SyncTree[SyncState]) -> None:
    tree.root.mkdir(parents=True)
    (tree.root / "[T] host").mkdir()
    (tree.root / "[T] host" / "analyst notes.txt").write_text("keep")
    folder = await tree.ensure_case_folder(Case(tsid="T", name="host"))
    assert folder.name == "[T] host (2)"
    assert (tree.root / "[T] host" / "analyst notes.txt").read_text() == "keep"


async def test_found_again_after_a_rename_by_hand(tree: SyncTree[SyncState]) -> None:
    case = Case(tsid="T", name="host")
    folder = await tree.ensure_case_folder(case)
    (folder / "data").write_text("x")
    os.rename(folder, tree.root / "renamed by an analyst")
    # The marker says whose folder it is: renamed back, content kept, no new folder.
    again = await tree.ensure_case_folder(case)
    assert again == folder
    assert (again / "data").read_text() == "x"
    assert _visible(tree.root) == ["[T] host"]


async def test_a_folder_with_no_state_hint_is_found(tree: SyncTree[SyncState]) -> None:
    """A crash after the rename, before the state was written: the marker finds it."""
    case = Case(tsid="T", name="old")
    folder = await tree.ensure_case_folder(case)
    os.rename(folder, tree.root / "[T] new")
    state_path = tree.state_path(case.guid)
    stale = msgspec.json.decode(state_path.read_bytes())
    assert stale["folder"] == "[T] old"
    case.name = "new"
    assert (await tree.ensure_case_folder(case)).name == "[T] new"
    assert _visible(tree.root) == ["[T] new"]


async def test_remove_and_prune_take_folder_and_state(tree: SyncTree[SyncState]) -> None:
    kept, gone, removed = (Case(tsid="K", name="k"), Case(name="g"), Case(tsid="R", name="r"))
    for case in (kept, gone, removed):
        await tree.ensure_section(case, "evidence")
    assert await tree.remove_case(removed.guid) is True
    assert await tree.remove_case(removed.guid) is False
    assert await tree.prune([kept.guid]) == [gone.guid]
    assert _visible(tree.root) == ["[K] k"]
    assert await tree.enumerate_cases() == [kept.guid]
    assert await tree.purge_leftovers(older_than=0) == 0
    assert sorted(os.listdir(tree.root)) == [".fusion-state", "[K] k"]


async def test_guid_layout_gets_sections_too(tmp_path: Path) -> None:
    tree = SyncTree(tmp_path, sections=["evidence"])
    case = Case(tsid="T", name="n")
    section = await tree.ensure_section(case, "evidence")
    assert section == (tmp_path / str(case.guid) / "01 - evidence").resolve()
    assert section.is_dir()
    await tree.record_success(case.guid)
    assert (await tree.read_state(case.guid)).folder is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "flat"}, "layout"),
        ({"sections": ["a/b"]}, "section label"),
        ({"sections": [".hidden"]}, "section label"),
        ({"sections": [""]}, "section label"),
        ({"sections": ["a", "a"]}, "repeat"),
    ],
)
def test_options_are_checked(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyncTree(tmp_path, **kwargs)  # type: ignore[call-overload]


@pytest.mark.parametrize("name", ["../../outside", "/etc", "..", "a/../../b", "x\0y", "."])
async def test_hostile_case_names_stay_inside_the_root(
    tree: SyncTree[SyncState], tmp_path: Path, name: str
) -> None:
    folder = await tree.ensure_case_folder(Case(tsid="..", name=name))
    assert folder.parent == tree.root.resolve()
    assert sorted(os.listdir(tmp_path)) == ["sync"]
