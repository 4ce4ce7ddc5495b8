"""ConceptStorage on real files: layout, atomicity under a killed writer, path refusal."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID, uuid4

import msgspec
import pytest

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
    assert await samples.enumerate() == [guid]


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
    guids = sorted(uuid4() for _ in range(3))
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
    assert await samples.enumerate_metadata() == [(with_metadata, Sample(name="m"))]


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
    "not-a-guid",
    "12345678123456781234567812345678",  # bare hex: UUID() takes it, we do not
    "{12345678-1234-5678-1234-567812345678}",
    "urn:uuid:12345678-1234-5678-1234-567812345678",
    "12345678-1234-5678-1234-567812345678/../x",
    "12345678-1234-5678-1234-567812345678\0",
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_object_names_must_be_guids(samples: ConceptStorage[Sample], name: str) -> None:
    with pytest.raises(UnsafePathError, match="not a GUID"):
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
import asyncio, sys
from pathlib import Path
from uuid import UUID
from fusion.concept import Concept
from fusion.server.storage import ConceptStorage

class Sample(Concept, kw_only=True):
    name: str
    size: int = 0

async def main() -> None:
    storage = ConceptStorage(Path(sys.argv[1]), Sample)
    guid = UUID(sys.argv[2])
    size = int(sys.argv[3])
    generation = int(sys.argv[4])
    while True:
        generation += 1
        fill = bytes([generation % 251])
        await storage.write_data(guid, fill * size)
        await storage.write_metadata(guid, Sample(name=fill.hex() * 20_000, size=size))
        print(generation, flush=True)

asyncio.run(main())
"""

_SIZE = 4 * 1024 * 1024


def _check_whole(storage: ConceptStorage[Sample], guid: UUID) -> None:
    data = storage.data_path(guid).read_bytes()
    assert len(data) == _SIZE
    assert data == data[:1] * _SIZE, "data file mixes two writes"
    metadata = Sample.from_json(storage.metadata_path(guid).read_bytes())
    assert metadata.size == _SIZE
    assert len(set(metadata.name)) <= 2


async def test_killed_writer_leaves_old_or_new_never_partial(tmp_path: Path) -> None:
    storage = ConceptStorage(tmp_path / "objects", Sample)
    script = textwrap.dedent(_WRITER)
    guids = sorted(uuid4() for _ in range(5))
    # One writer process per object, started together to pay Python's start-up once.
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            str(storage.root),
            str(guid),
            str(_SIZE),
            str(index * 50),
            stdout=asyncio.subprocess.PIPE,
        )
        for index, guid in enumerate(guids)
    ]
    for delay, writer in enumerate(writers):
        assert writer.stdout is not None
        # Let it finish at least one full write, then kill it at varying points.
        assert await writer.stdout.readline(), "writer died before its first write"
        await asyncio.sleep(0.002 * delay)
        writer.send_signal(signal.SIGKILL)
    for writer in writers:
        await writer.wait()

    interrupted = 0
    for guid in guids:
        _check_whole(storage, guid)
        leftovers = [p for p in storage.object_dir(guid).iterdir() if p.name.startswith(".")]
        interrupted += bool(leftovers)
        assert await storage.list_data_files(guid) == []
    assert await storage.enumerate() == guids
    # The kills did land mid-write (a temporary was left) at least once.
    assert interrupted >= 1, interrupted

    # Those leftovers are cleaned once old enough, never while fresh.
    assert await storage.purge_leftovers(older_than=3600) == 0
    assert await storage.purge_leftovers(older_than=0) == interrupted
    for guid in guids:
        names = sorted(p.name for p in storage.object_dir(guid).iterdir())
        assert names == ["data", "metadata.json"]
        _check_whole(storage, guid)


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


async def test_writes_do_not_block_the_loop(samples: ConceptStorage[Sample]) -> None:
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    guids = [uuid4() for _ in range(100)]
    await asyncio.gather(
        *(samples.write_metadata(guid, Sample(name="n")) for guid in guids),
        *(samples.write_data(guid, b"x" * 65536) for guid in guids),
    )
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    assert await samples.enumerate() == sorted(guids)
    # Blocking writes would leave the ticker a handful of ticks, each as long as
    # the writes. Threaded ones let it tick all along; a single slow tick (the
    # loop starting 200 tasks and the thread pool) is not a block.
    assert len(lags) > 10, (len(lags), elapsed)
    assert statistics.median(lags) < 0.01, (statistics.median(lags), elapsed)
