"""Streaming bytes from and to files without holding them in memory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import IO

import aiofiles

from fusion.helper.filesystem import _commit_temp, _discard, _open_temp_beside

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "SizeLimitError",
    "iter_file",
    "iter_fileobj",
    "iter_text",
    "stream_to_file",
]

DEFAULT_CHUNK_SIZE = 64 * 1024


class SizeLimitError(ValueError):
    """More bytes than allowed: ``limit`` is the cap that was exceeded."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"size limit of {limit} bytes exceeded")
        self.limit = limit


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")


async def iter_file(
    path: Path | str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    start: int = 0,
    end: int | None = None,
) -> AsyncIterator[bytes]:
    """Chunks of the file at ``path`` from offset ``start`` up to ``end`` (exclusive)."""
    _check_chunk_size(chunk_size)
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range start={start} end={end}")
    remaining = None if end is None else end - start
    async with aiofiles.open(path, "rb") as fobj:
        if start:
            await fobj.seek(start)
        while remaining is None or remaining > 0:
            size = chunk_size if remaining is None else min(chunk_size, remaining)
            chunk: bytes = await fobj.read(size)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


async def iter_text(
    text: str, chunk_size: int = DEFAULT_CHUNK_SIZE, encoding: str = "utf-8"
) -> AsyncIterator[bytes]:
    """``text`` encoded, in chunks of at most ``chunk_size`` bytes."""
    _check_chunk_size(chunk_size)
    data = text.encode(encoding)
    for offset in range(0, len(data), chunk_size):
        yield data[offset : offset + chunk_size]


async def iter_fileobj(
    fobj: IO[bytes], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> AsyncIterator[bytes]:
    """Chunks read from a binary file object, in a worker thread (reads may block)."""
    _check_chunk_size(chunk_size)
    while chunk := await asyncio.to_thread(fobj.read, chunk_size):
        yield chunk


async def stream_to_file(
    chunks: AsyncIterable[bytes] | Iterable[bytes],
    path: Path | str,
    max_size: int | None = None,
) -> int:
    """Write ``chunks`` to ``path`` atomically; returns the number of bytes written.

    The data goes to a temporary file beside ``path``, is fsynced, then renamed.
    Beyond ``max_size`` bytes :class:`SizeLimitError` is raised; on that or any other
    error (or cancellation) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, temp = await asyncio.to_thread(_open_temp_beside, path)
    os.close(fd)
    total = 0
    try:
        async with aiofiles.open(temp, "wb") as fobj:
            if isinstance(chunks, AsyncIterable):
                async for chunk in chunks:
                    total += len(chunk)
                    if max_size is not None and total > max_size:
                        raise SizeLimitError(max_size)
                    await fobj.write(chunk)
            else:
                for chunk in chunks:
                    total += len(chunk)
                    if max_size is not None and total > max_size:
                        raise SizeLimitError(max_size)
                    await fobj.write(chunk)
            await fobj.flush()
            await asyncio.to_thread(os.fsync, fobj.fileno())
        await asyncio.to_thread(_commit_temp, temp, path)
    except BaseException:
        # Synchronous on purpose: one unlink, and it must run even when cancelled.
        _discard(temp)
        raise
    return total
