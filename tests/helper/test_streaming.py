"""fusion.helper.streaming on real files."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fusion.helper.streaming import (
    DEFAULT_CHUNK_SIZE,
    SizeLimitError,
    iter_file,
    iter_fileobj,
    iter_text,
    stream_to_file,
)

DATA = bytes(range(256)) * 1000  # 256000 bytes


async def _collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.bin"
    path.write_bytes(DATA)
    return path


async def test_iter_file(source: Path) -> None:
    chunks = await _collect(iter_file(source))
    assert b"".join(chunks) == DATA
    assert [len(c) for c in chunks[:-1]] == [DEFAULT_CHUNK_SIZE] * (len(chunks) - 1)
    assert (
        b"".join(await _collect(iter_file(source, chunk_size=1000, start=10, end=2510)))
        == (DATA[10:2510])
    )
    small = await _collect(iter_file(source, chunk_size=1000, start=100, end=2100))
    assert [len(c) for c in small] == [1000, 1000]
    assert await _collect(iter_file(source, start=len(DATA) + 5)) == []
    assert b"".join(await _collect(iter_file(source, end=len(DATA) + 100))) == DATA
    assert await _collect(iter_file(source, start=7, end=7)) == []


async def test_iter_file_errors(source: Path) -> None:
    with pytest.raises(ValueError, match="invalid byte range"):
        await _collect(iter_file(source, start=10, end=5))
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        await _collect(iter_file(source, chunk_size=0))
    with pytest.raises(FileNotFoundError):
        await _collect(iter_file(source.with_name("missing")))


async def test_iter_text() -> None:
    text = "héllo wörld" * 10
    chunks = await _collect(iter_text(text, chunk_size=7))
    assert all(len(c) <= 7 for c in chunks)
    assert b"".join(chunks).decode() == text
    assert await _collect(iter_text("")) == []


async def test_iter_fileobj() -> None:
    chunks = await _collect(iter_fileobj(io.BytesIO(DATA), chunk_size=100_000))
    assert [len(c) for c in chunks] == [100_000, 100_000, 56_000]
    assert b"".join(chunks) == DATA


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_stream_to_file(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "copy.bin"
    assert await stream_to_file(iter_file(source, chunk_size=4096), target) == len(DATA)
    assert target.read_bytes() == DATA
    assert await stream_to_file([b"ab", b"", b"c"], target, max_size=3) == 3
    assert target.read_bytes() == b"abc"
    assert _names(tmp_path) == ["copy.bin", "source.bin"]


async def test_stream_to_file_size_limit(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "new.bin"
    with pytest.raises(SizeLimitError, match="size limit of 1000 bytes exceeded") as info:
        await stream_to_file(iter_file(source, chunk_size=300), target, max_size=1000)
    assert info.value.limit == 1000
    assert _names(tmp_path) == ["source.bin"]
    # An existing file is left as it was.
    target.write_bytes(b"keep")
    with pytest.raises(SizeLimitError):
        await stream_to_file([b"12345"], target, max_size=4)
    assert target.read_bytes() == b"keep"
    assert _names(tmp_path) == ["new.bin", "source.bin"]


async def test_stream_to_file_source_error(tmp_path: Path) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("peer gone")

    with pytest.raises(ConnectionResetError):
        await stream_to_file(failing(), tmp_path / "x.bin")
    assert _names(tmp_path) == []


async def test_stream_to_file_cancelled(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"first"
        started.set()
        await asyncio.sleep(60)
        yield b"never"

    task = asyncio.create_task(stream_to_file(slow(), tmp_path / "x.bin"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _names(tmp_path) == []
