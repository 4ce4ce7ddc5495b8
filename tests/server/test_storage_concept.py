"""ConceptStorage on real files: layout, atomicity under a killed writer, path refusal."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from fusion_testing.clock import eventually

from fusion.concept import Concept, ConceptError, Status
from fusion.helper.filesystem import UnsafePathError
from fusion.server.storage import ConceptStorage


class Sample(Concept, kw_only=True):
    """A service's metadata concept."""

    name: str
    size: int = 0
    status: Status = Status.PENDING
    tags: set[str] = msgspec.field(default_factory=set)


@pytest.fixture
def samples(tmp_path: Path) -> ConceptStorage[Sample]:
    return ConceptStorage(tmp_path / "samples", Sample)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


# -- layout --------------------------------------------------------------------------


async def test_layout_on_disk(samples: ConceptStorage[Sample]) -> None:
    guid = uuid4()
    await samples.write_metadata(guid, Sample(name="evil.exe", size=3, tags={"pe"}))
    assert await samples.write_data(guid, b"MZ\x90") == 3
    await samples.write_data_file(guid, "strings.txt", b"hello")
    await samples.write_data_file(guid, "pe/sections/.text", b"\xcc")

    directory = samples.root / str(guid)
    assert sorted(p.name for p in directory.iterdir()) == ["data", "data.d", "metadata.json"]
    assert (directory / "data").read_bytes() == b"MZ\x90"
    assert (directory / "data.d" / "strings.txt").read_bytes() == b"hello"
    on_disk = msgspec.json.decode((directory / "metadata.json").read_bytes())
    assert on_disk == {"name": "evil.exe", "size": 3, "status": "pending", "tags": ["pe"]}
    assert samples.object_dir(guid) == directory.resolve()
    assert samples.data_path(guid) == directory.resolve() / "data"
    assert samples.metadata_path(guid) == directory.resolve() / "metadata.json"


async def test_metadata_roundtrip_and_replace(samples: ConceptStorage[Sample]) -> None:
    guid = uuid4()
    assert await samples.read_metadata(guid) is None
    await samples.write_metadata(guid, Sample(name="a"))
    await samples.write_metadata(guid, Sample(name="a", status=Status.SUCCESS, size=9))
    loaded = await samples.read_metadata(guid)
    assert loaded == Sample(name="a", status=Status.SUCCESS, size=9)
    assert isinstance(loaded, Sample)


async def test_guid_given_as_canonical_string(samples: ConceptStorage[Sample]) -> None:
    guid = uuid4()
    await samples.write_metadata(str(guid), Sample(name="s"))
    assert await samples.read_metadata(guid) == Sample(name="s")
    assert await samples.enumerate() == [str(guid)]


async def test_data_roundtrip_bytes_and_stream(samples: ConceptStorage[Sample]) -> None:
    guid = uuid4()
    assert await samples.read_data(guid) is None
    await samples.write_data(guid, b"first")
    assert await samples.read_data(guid) == b"first"
    size = await samples.write_data(guid, chunks(b"a" * 100_000, b"", b"b" * 50_000))
    assert size == 150_000
    assert await samples.read_data(guid) == b"a" * 100_000 + b"b" * 50_000


async def test_failed_stream_keeps_the_old_file(samples: ConceptStorage[Sample]) -> None:
    guid = uuid4()
    await samples.write_data(guid, b"old content")

    async def broken() -> AsyncIterator[bytes]:
        yield b"new partial content"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await samples.write_data(guid, broken())
    assert await samples.read_data(guid) == b"old content"
    # No temporary left behind either.
    assert sorted(p.name for p in samples.object_dir(guid).iterdir()) == ["data"]


async def test_data_dir_files(samples: ConceptStorage[Sample]) -> None:
    guid = uuid4()
    assert await samples.list_data_files(guid) == []
    assert await samples.read_data_file(guid, "x") is None
    path = await samples.write_data_file(guid, "reports/summary.json", b"{}")
    assert path == samples.data_dir(guid) / "reports" / "summary.json"
    await samples.write_data_file(guid, "a.bin", chunks(b"1", b"2"))
    assert await samples.read_data_file(guid, "a.bin") == b"12"
    assert await samples.list_data_files(guid) == ["a.bin", "reports/summary.json"]


async def test_enumerate_and_delete(samples: ConceptStorage[Sample]) -> None:
    assert await samples.enumerate() == []
    guids = sorted(str(uuid4()) for _ in range(3))
    for guid in guids:
        await samples.write_metadata(guid, Sample(name=str(guid)))
    await samples.write_data_file(guids[0], "deep/er/file", b"x")
    # Things that are not objects are ignored by listings.
    (samples.root / "README").write_text("not an object")
    (samples.root / str(uuid4())).write_text("a file, not a directory")
    assert await samples.enumerate() == guids
    assert [guid for guid, _ in await samples.enumerate_metadata()] == guids
    assert await samples.exists(guids[0])

    assert await samples.delete(guids[0]) is True
    assert await samples.delete(guids[0]) is False
    assert not await samples.exists(guids[0])
    assert await samples.enumerate() == guids[1:]
    assert not any(p.name.startswith(".") for p in samples.root.iterdir())


async def test_enumerate_metadata_skips_objects_without_it(
    samples: ConceptStorage[Sample],
) -> None:
    with_metadata, without = uuid4(), uuid4()
    await samples.write_metadata(with_metadata, Sample(name="m"))
    await samples.write_data(without, b"only data")
    assert await samples.enumerate_metadata() == [(str(with_metadata), Sample(name="m"))]


async def test_missing_root_lists_nothing(tmp_path: Path) -> None:
    storage = ConceptStorage(tmp_path / "nowhere")
    assert await storage.enumerate() == []
    assert await storage.enumerate_metadata() == []
    assert await storage.delete(uuid4()) is False


async def test_broken_metadata_is_a_clear_error(samples: ConceptStorage[Sample]) -> None:
    guid = uuid4()
    await samples.write_metadata(guid, Sample(name="ok"))
    samples.metadata_path(guid).write_text('{"name": 42}')
    with pytest.raises(ConceptError, match=r"metadata\.json.*\$\.name"):
        await samples.read_metadata(guid)


# -- refusing path tricks ---------------------------------------------------------------

BAD_NAMES = [
    "..",
    "../../etc",
    "/etc/passwd",
    "",
    "12345678-1234-5678-1234-567812345678/../x",
    "12345678-1234-5678-1234-567812345678\0",
    "12345678-1234-5678-1234-56781234567A",  # upper case: not the UUID's key
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_unsafe_keys_are_refused(samples: ConceptStorage[Sample], name: str) -> None:
    with pytest.raises(UnsafePathError, match="key"):
        await samples.write_metadata(name, Sample(name="x"))
    with pytest.raises(UnsafePathError):
        await samples.read_data(name)
    with pytest.raises(UnsafePathError):
        await samples.delete(name)
    assert not samples.root.exists() or list(samples.root.iterdir()) == []


@pytest.mark.parametrize("relative", ["../metadata.json", "/etc/passwd", "a/../../data", "x\0y"])
async def test_data_dir_paths_may_not_leave_it(
    samples: ConceptStorage[Sample], relative: str
) -> None:
    guid = uuid4()
    await samples.write_data(guid, b"keep")
    with pytest.raises(UnsafePathError):
        await samples.write_data_file(guid, relative, b"overwrite")
    with pytest.raises(UnsafePathError):
        await samples.read_data_file(guid, relative)
    assert await samples.read_data(guid) == b"keep"


async def test_data_dir_itself_is_not_a_file(samples: ConceptStorage[Sample]) -> None:
    with pytest.raises(ValueError, match=r"data\.d itself"):
        await samples.write_data_file(uuid4(), ".", b"x")


async def test_symlink_out_of_root_is_refused(
    samples: ConceptStorage[Sample], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    guid = uuid4()
    samples.root.mkdir(parents=True)
    (samples.root / str(guid)).symlink_to(outside)
    with pytest.raises(UnsafePathError, match="leaves"):
        await samples.write_metadata(guid, Sample(name="x"))
    with pytest.raises(UnsafePathError):
        await samples.delete(guid)
    assert list(outside.iterdir()) == []

    inside = uuid4()
    await samples.write_data(inside, b"x")
    (samples.data_dir(inside)).mkdir()
    (samples.data_dir(inside) / "escape").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        await samples.write_data_file(inside, "escape/file", b"x")
    assert list(outside.iterdir()) == []


# -- atomicity when the writer dies ---------------------------------------------------------

_WRITER = """
import asyncio, os, sys, time
from pathlib import Path
from uuid import UUID
from fusion.concept import Concept
from fusion.server.storage import ConceptStorage

class Sample(Concept, kw_only=True):
    name: str
    size: int = 0

def mid_write() -> None:
    # The parent kills this process as soon as it reads the line: the kill
    # lands here, between a partial or complete temporary and its rename.
    print("mid-write", flush=True)
    time.sleep(3600)

async def main() -> None:
    storage = ConceptStorage(Path(sys.argv[1]), Sample)
    guid = UUID(sys.argv[2])
    size = int(sys.argv[3])
    where = sys.argv[4]
    old, new = b"o", b"n"
    await storage.write_data(guid, old * size)
    await storage.write_metadata(guid, Sample(name=old.hex() * 1000, size=size))
    if where == "data":
        async def half_then_stop():
            # Bigger than the file's buffer: on disk before the signal.
            yield new * (size // 2)
            mid_write()
            yield new * (size - size // 2)
        await storage.write_data(guid, half_then_stop())
    else:
        real_replace = os.replace
        def replace(src, dst):
            if Path(dst).name == "metadata.json":
                mid_write()
            real_replace(src, dst)
        os.replace = replace
        await storage.write_data(guid, new * size)
        await storage.write_metadata(guid, Sample(name=new.hex() * 1000, size=size))
    print("not interrupted", flush=True)

asyncio.run(main())
"""

_SIZE = 4 * 1024 * 1024


def _check_whole(
    storage: ConceptStorage[Sample], guid: UUID, data_fill: bytes, name: bytes
) -> None:
    data = storage.data_path(guid).read_bytes()
    assert data == data_fill * _SIZE, "data file is partial or mixes two writes"
    metadata = Sample.from_json(storage.metadata_path(guid).read_bytes())
    assert (metadata.size, metadata.name) == (_SIZE, name.hex() * 1000)


@pytest.mark.parametrize(
    ("where", "data_after", "partial"),
    [
        # Killed streaming the new data: the old data stays, the temporary is half.
        ("data", b"o", True),
        # Killed with the new metadata written out but not renamed: new data
        # (renamed before), old metadata, a complete temporary.
        ("metadata", b"n", False),
    ],
)
async def test_killed_writer_leaves_old_or_new_never_partial(
    tmp_path: Path, where: str, data_after: bytes, partial: bool
) -> None:
    storage = ConceptStorage(tmp_path / "objects", Sample)
    guid = uuid4()
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(_WRITER),
        str(storage.root),
        str(guid),
        str(_SIZE),
        where,
        stdout=asyncio.subprocess.PIPE,
    )
    assert writer.stdout is not None
    try:
        line = await asyncio.wait_for(writer.stdout.readline(), 60)
        assert line == b"mid-write\n", line
    finally:
        writer.send_signal(signal.SIGKILL)
        await writer.wait()

    _check_whole(storage, guid, data_after, b"o")
    leftovers = [p for p in storage.object_dir(guid).iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1, leftovers
    left = leftovers[0].stat().st_size
    assert (0 < left < _SIZE) if partial else left > 0, left
    assert await storage.list_data_files(guid) == []
    assert await storage.enumerate() == [str(guid)]

    # The leftover is cleaned once old enough, never while fresh.
    assert await storage.purge_leftovers(older_than=3600) == 0
    assert await storage.purge_leftovers(older_than=0) == 1
    assert sorted(p.name for p in storage.object_dir(guid).iterdir()) == ["data", "metadata.json"]
    _check_whole(storage, guid, data_after, b"o")


async def test_purge_removes_half_deleted_objects(tmp_path: Path) -> None:
    storage = ConceptStorage(tmp_path)
    doomed = tmp_path / f".{uuid4()}.0123456789ab.removing"
    (doomed / "data.d").mkdir(parents=True)
    (doomed / "data").write_bytes(b"x")
    old = time.time() - 7200
    os.utime(doomed, (old, old))
    keep = tmp_path / ".hidden-but-not-ours"
    keep.write_text("x")
    os.utime(keep, (old, old))
    assert await storage.purge_leftovers() == 1
    assert not doomed.exists()
    assert keep.exists()


async def test_purge_reaches_into_data_d(samples: ConceptStorage[Sample]) -> None:
    guid = uuid4()
    await samples.write_data_file(guid, "a/b/report.json", b"{}")
    stale = samples.data_dir(guid) / "a" / "b" / ".report.json.0123456789ab.tmp"
    stale.write_bytes(b"{partial")
    fresh = samples.data_dir(guid) / "a" / ".other.0123456789ab.tmp"
    fresh.write_bytes(b"being written")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert await samples.purge_leftovers() == 1
    assert not stale.exists()
    assert fresh.exists()
    assert await samples.list_data_files(guid) == ["a/b/report.json"]


# -- the event loop ----------------------------------------------------------------------------


class _GatedExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, whose jobs wait until :attr:`gate` opens."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.gate = threading.Event()
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1

        def gated() -> Any:
            assert self.gate.wait(60), "gate never opened"
            return fn(*args, **kwargs)

        return super().submit(gated)


async def test_writes_do_not_block_the_loop(samples: ConceptStorage[Sample]) -> None:
    # Every file operation goes to a worker thread: with the workers held,
    # nothing is written, the loop runs on, and the writes finish once they go.
    executor = _GatedExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    guids = [uuid4() for _ in range(20)]
    batch = asyncio.gather(
        *(samples.write_metadata(guid, Sample(name="n")) for guid in guids),
        *(samples.write_data(guid, b"x" * 65536) for guid in guids),
    )
    try:
        await eventually(lambda: executor.submitted >= len(guids), "the writes reached the workers")
        assert not batch.done()
        assert list(samples.root.glob("*/*")) == [], "written on the loop"
    finally:
        executor.gate.set()
    await batch
    assert await samples.enumerate() == sorted(map(str, guids))
    for guid in guids:
        assert samples.data_path(guid).read_bytes() == b"x" * 65536
