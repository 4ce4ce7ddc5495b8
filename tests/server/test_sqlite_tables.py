"""SQLiteTable on real SQLite files: rows, indexed filters, schema on start, two processes."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
from pathlib import Path
from uuid import UUID, uuid4

import msgspec
import pytest

from fusion.concept import Case, Concept, Status
from fusion.server.storage import RowExistsError, SQLiteStorage, SQLiteTable, StorageClosedError


class Analysis(Concept, kw_only=True):
    analyzer: str
    status: Status = Status.PENDING
    sample: UUID | None = None
    score: int = 0
    malicious: bool = False
    tags: list[str] = msgspec.field(default_factory=list)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "neon.sqlite"


async def test_rows_roundtrip(path: Path) -> None:
    async with SQLiteTable(path, "analysis", Analysis) as table:
        assert await table.get("yara") is None
        assert await table.count() == 0
        await table.put("yara", Analysis(analyzer="yara", tags=["pe"]))
        await table.put("capa", Analysis(analyzer="capa"))
        # put replaces.
        await table.put("yara", Analysis(analyzer="yara", score=7))
        assert await table.get("yara") == Analysis(analyzer="yara", score=7)
        assert await table.enumerate() == [
            ("capa", Analysis(analyzer="capa")),
            ("yara", Analysis(analyzer="yara", score=7)),
        ]
        assert await table.count() == 2
        # A UUID key is its canonical string.
        guid = uuid4()
        await table.put(guid, Analysis(analyzer="guid"))
        assert await table.get(str(guid)) == Analysis(analyzer="guid")
        assert await table.delete(guid) is True
        assert await table.delete(guid) is False
        assert await table.count() == 2


async def test_insert_refuses_an_existing_key(path: Path) -> None:
    async with SQLiteTable(path, "analysis", Analysis) as table:
        await table.insert("yara", Analysis(analyzer="yara", score=1))
        with pytest.raises(RowExistsError, match="'yara' already exists") as raised:
            await table.insert("yara", Analysis(analyzer="other", score=2))
        assert (raised.value.table, raised.value.key) == ("analysis", "yara")
        assert await table.get("yara") == Analysis(analyzer="yara", score=1)
        assert await table.count() == 1


async def test_filters_on_indexed_fields(path: Path) -> None:
    sample = uuid4()
    rows = {
        "a": Analysis(analyzer="yara", status=Status.SUCCESS, sample=sample, malicious=True),
        "b": Analysis(analyzer="capa", status=Status.PENDING, sample=sample),
        "c": Analysis(analyzer="yara", status=Status.PENDING),
    }
    indexed = ("status", "sample", "malicious", "analyzer")
    async with SQLiteTable(path, "analysis", Analysis, indexed=indexed) as table:
        for key, row in rows.items():
            await table.put(key, row)

        async def keys(**equal: object) -> list[str]:
            found = [key for key, _ in await table.enumerate(**equal)]
            assert await table.count(**equal) == len(found)
            return found

        assert await keys(status=Status.PENDING) == ["b", "c"]
        assert await keys(status="success") == ["a"]
        assert await keys(sample=sample) == ["a", "b"]
        assert await keys(sample=None) == ["c"]
        assert await keys(malicious=True) == ["a"]
        assert await keys(analyzer="yara", status=Status.PENDING) == ["c"]
        assert await keys(analyzer="nope") == []
        # A replaced row is found by its new values only.
        await table.put("c", Analysis(analyzer="capa", status=Status.FAILURE))
        assert await keys(analyzer="yara") == ["a"]
        assert await keys(status=Status.FAILURE) == ["c"]
        with pytest.raises(ValueError, match="'score', not an indexed field"):
            await table.enumerate(score=0)
        with pytest.raises(ValueError, match="not an indexed field"):
            await table.count(tags=[])


async def test_a_field_indexed_later_is_filled_for_old_rows(path: Path) -> None:
    async with SQLiteTable(path, "analysis", Analysis) as table:
        await table.put("a", Analysis(analyzer="yara", status=Status.SUCCESS))
        await table.put("b", Analysis(analyzer="capa"))
    async with SQLiteTable(path, "analysis", Analysis, indexed=["status"]) as table:
        assert [key for key, _ in await table.enumerate(status=Status.SUCCESS)] == ["a"]
        assert await table.count(status=Status.PENDING) == 1
    indexes = _indexes(path)
    assert "analysis_f_status" in indexes


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {str(row[0]) for row in rows}


async def test_the_file_is_wal(path: Path) -> None:
    async with SQLiteTable(path, "analysis", Analysis):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"


async def test_shares_a_file_with_sqlite_storage(tmp_path: Path) -> None:
    storage: SQLiteStorage[Case] = SQLiteStorage(tmp_path)
    async with storage, SQLiteTable(storage.path, "analysis", Analysis) as table:
        case = Case(name="c")
        await storage.create_case(case)
        await table.put("yara", Analysis(analyzer="yara"))
        assert await storage.retrieve_case(case.guid) == case
        assert await table.get("yara") == Analysis(analyzer="yara")


@pytest.mark.parametrize(
    "table", ["cases", "IDENTITIES", "sqlite_master", "a b", "x;drop table cases", "", "1x"]
)
def test_unusable_table_names_are_refused(path: Path, table: str) -> None:
    with pytest.raises(ValueError, match="table"):
        SQLiteTable(path, table, Analysis)
    assert not path.exists()


def test_indexed_fields_must_exist(path: Path) -> None:
    with pytest.raises(ValueError, match="no field 'nope'"):
        SQLiteTable(path, "analysis", Analysis, indexed=["nope"])


async def test_bad_values_are_refused_and_nothing_is_written(path: Path) -> None:
    class Tagged(Concept, kw_only=True):
        tags: list[str] = msgspec.field(default_factory=list)

    async with SQLiteTable(path, "tagged", Tagged, indexed=["tags"]) as table:
        with pytest.raises(TypeError, match="indexed field"):
            await table.put("x", Tagged(tags=["a"]))
        with pytest.raises(ValueError, match="row key"):
            await table.put("", Tagged())
        with pytest.raises(TypeError, match="stores Tagged"):
            await table.put("y", Analysis(analyzer="a"))  # type: ignore[arg-type]
        assert await table.count() == 0


async def test_used_before_startup_or_after_shutdown(path: Path) -> None:
    table = SQLiteTable(path, "analysis", Analysis)
    with pytest.raises(StorageClosedError, match="not started"):
        await table.get("x")
    async with table:
        await table.put("x", Analysis(analyzer="x"))
    with pytest.raises(StorageClosedError):
        await table.put("y", Analysis(analyzer="y"))


async def test_an_undecodable_row_names_the_table(path: Path) -> None:
    async with SQLiteTable(path, "analysis", Analysis) as table:
        await table.put("x", Analysis(analyzer="x"))
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE analysis SET data = ? WHERE key = 'x'", (b'{"analyzer": 3}',))
        with pytest.raises(sqlite3.DataError, match=r"analysis.*\$\.analyzer"):
            await table.get("x")


async def test_a_locked_file_never_blocks_the_loop(path: Path) -> None:
    async with SQLiteTable(path, "analysis", Analysis) as table:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # holds the write lock
            put = asyncio.ensure_future(table.put("x", Analysis(analyzer="x")))
            # The loop keeps running while the write waits on the lock in its thread.
            for _ in range(100):
                await asyncio.sleep(0)
            assert not put.done()
            # Reads do not wait for a writer in WAL mode.
            assert await table.get("x") is None
            other.execute("COMMIT")
        finally:
            other.close()
        await asyncio.wait_for(put, 60)
        assert await table.get("x") == Analysis(analyzer="x")


# -- two processes on one file ------------------------------------------------------------

_CHILD = """
import asyncio, sys
from pathlib import Path
from fusion.concept import Concept
from fusion.server.storage import RowExistsError, SQLiteTable

class Analysis(Concept, kw_only=True):
    analyzer: str
    score: int = 0

async def main() -> None:
    path, mode = Path(sys.argv[1]), sys.argv[2]
    async with SQLiteTable(path, "analysis", Analysis, indexed=["analyzer"]) as table:
        if mode == "ping-pong":
            await table.put("from-child", Analysis(analyzer="child", score=1))
            print("written", flush=True)
            sys.stdin.readline()  # the parent has written
            row = await table.get("from-parent")
            print(row.to_json().decode() if row else "missing", flush=True)
            print(await table.count(analyzer="parent"), flush=True)
        else:  # race: insert the same keys as another process
            won = 0
            for index in range(int(sys.argv[3])):
                try:
                    await table.insert(f"k{index}", Analysis(analyzer=mode))
                    won += 1
                except RowExistsError:
                    pass
            print(won, flush=True)

asyncio.run(main())
"""


async def _child(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(_CHILD),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def test_a_write_in_one_process_is_read_by_the_other(path: Path) -> None:
    class ParentAnalysis(Concept, kw_only=True):
        analyzer: str
        score: int = 0

    async with SQLiteTable(path, "analysis", ParentAnalysis, indexed=["analyzer"]) as table:
        child = await _child(str(path), "ping-pong")
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            assert line == b"written\n"
            # The child's commit is seen here at once: no cache to go stale.
            assert await table.get("from-child") == ParentAnalysis(analyzer="child", score=1)
            assert await table.count(analyzer="child") == 1
            await table.put("from-parent", ParentAnalysis(analyzer="parent", score=2))
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            row = await asyncio.wait_for(child.stdout.readline(), 60)
            count = await asyncio.wait_for(child.stdout.readline(), 60)
        finally:
            if child.returncode is None:
                child.stdin.close()
            assert await asyncio.wait_for(child.wait(), 60) == 0
    assert msgspec.json.decode(row) == {"analyzer": "parent", "score": 2}
    assert count == b"1\n"


async def test_two_processes_racing_on_a_new_file_each_key_inserted_once(path: Path) -> None:
    rows = 200
    children = [await _child(str(path), name, str(rows)) for name in ("left", "right")]
    outputs = [await asyncio.wait_for(child.communicate(), 120) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    won = [int(stdout) for stdout, _ in outputs]
    # No "database is locked", every key inserted by exactly one of them.
    assert sum(won) == rows, won
    async with SQLiteTable(path, "analysis", Analysis, indexed=["analyzer"]) as table:
        assert await table.count() == rows
        assert await table.count(analyzer="left") == won[0]
        assert await table.count(analyzer="right") == won[1]
