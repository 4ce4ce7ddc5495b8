"""Filesystem helpers: GUID-named items, disk usage, atomic writes, safe paths."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from uuid import UUID

__all__ = [
    "DiskUsage",
    "UnsafePathError",
    "atomic_write",
    "atomic_write_async",
    "directory_size",
    "disk_usage",
    "fsync_directory",
    "iter_guid_items",
    "safe_join",
]

_GUID_NAME = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


class UnsafePathError(ValueError):
    """A path would leave its root directory (``..``, absolute, symlink, NUL)."""


class DiskUsage(NamedTuple):
    """Bytes of the filesystem holding a path."""

    total: int
    used: int
    free: int


def iter_guid_items(directory: Path | str) -> Iterator[tuple[UUID, Path]]:
    """``(guid, path)`` of the entries of ``directory`` named by a GUID, sorted by name.

    Other names (temporary files, ``.lock``, ...) are ignored; a missing directory
    yields nothing.
    """
    try:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries if _GUID_NAME.fullmatch(entry.name))
    except FileNotFoundError:
        return
    base = Path(directory)
    for name in names:
        yield UUID(name), base / name


def disk_usage(path: Path | str) -> DiskUsage:
    """Total, used and free bytes of the filesystem holding ``path``."""
    usage = shutil.disk_usage(path)
    return DiskUsage(usage.total, usage.used, usage.free)


def directory_size(path: Path | str) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    stack = [os.fspath(path)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # removed while we walked
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def fsync_directory(path: Path | str) -> None:
    """Make a rename or creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> Path:
    # Same directory, so the final rename never crosses filesystems; hidden and
    # suffixed so that directory listings (GUID items) never pick it up.
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _open_temp_beside(path: Path) -> tuple[int, Path]:
    while True:
        temp = _temp_beside(path)
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), temp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _commit_temp(temp: Path, path: Path) -> None:
    """Rename the (already fsynced) ``temp`` over ``path`` and fsync the directory."""
    os.replace(temp, path)
    fsync_directory(path.parent)


def _discard(temp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()


def atomic_write(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new content, never a mix.

    Temporary file in the same directory, fsync, rename, fsync of the directory.
    """
    path = Path(path)
    fd, temp = _open_temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fobj:
            fobj.write(data)
            fobj.flush()
            os.fsync(fobj.fileno())
        _commit_temp(temp, path)
    except BaseException:
        _discard(temp)
        raise


async def atomic_write_async(path: Path | str, data: bytes) -> None:
    """:func:`atomic_write` in a worker thread, so the event loop never waits on the disk."""
    await asyncio.to_thread(atomic_write, path, data)


def safe_join(root: Path | str, *parts: str) -> Path:
    """``root / parts`` resolved, refusing anything that would end up outside ``root``.

    Refused with :class:`UnsafePathError`: absolute parts, ``..`` components, NUL
    bytes, and symlinks (existing ones along the path) pointing out of ``root``.
    """
    base = Path(root).resolve()
    candidate = base
    for part in parts:
        if "\0" in part:
            raise UnsafePathError(f"path part {part!r} contains a NUL byte")
        relative = Path(part)
        if relative.is_absolute():
            raise UnsafePathError(f"path part {part!r} is absolute")
        if ".." in relative.parts:
            raise UnsafePathError(f"path part {part!r} contains '..'")
        candidate = candidate / relative
    resolved = candidate.resolve()
    if not resolved.is_relative_to(base):
        raise UnsafePathError(f"path {'/'.join(parts)!r} leaves {base}")
    return resolved
