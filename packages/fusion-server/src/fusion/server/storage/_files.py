"""File plumbing shared by ConceptStorage and SyncTree (blocking: call from a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterable
from pathlib import Path
from typing import BinaryIO
from uuid import UUID

from fusion.helper.filesystem import (
    UnsafePathError,
    fsync_directory,
    iter_guid_items,
    safe_join,
    safe_segment,
)

__all__ = [
    "atomic_write_stream",
    "guid_dir",
    "guid_name",
    "key_dir",
    "key_name",
    "list_guid_dirs",
    "list_key_dirs",
    "purge_leftovers",
    "remove_tree",
]

# Names of what a crash may leave behind: temporaries of atomic writes
# (fusion.helper.filesystem: ".<name>.<hex>.tmp") and trees being removed.
_TEMP_SUFFIX = ".tmp"
_REMOVING_SUFFIX = ".removing"


def guid_name(value: UUID | str) -> str:
    """Canonical directory name of a GUID; anything else is refused.

    Only names produced here ever reach the filesystem, so ``..``, slashes,
    NUL bytes or absolute paths cannot sneak in through an object name.
    """
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str):
        try:
            parsed = UUID(value)
        except ValueError:
            parsed = None
        # UUID() also takes "{...}", "urn:uuid:..." and bare hex: only the canonical form passes.
        if parsed is not None and str(parsed) == value.lower():
            return str(parsed)
    raise UnsafePathError(f"not a GUID: {value!r}")


def guid_dir(root: Path, value: UUID | str) -> Path:
    """``root/<guid>``, refusing a planted symlink that would lead out of ``root``."""
    return safe_join(root, guid_name(value))


def list_guid_dirs(root: Path) -> list[UUID]:
    """GUIDs of the sub-directories of ``root`` named by a GUID (sorted)."""
    return [guid for guid, path in iter_guid_items(root) if path.is_dir()]


def key_name(key: UUID | str) -> str:
    """Directory name of a storage key: a UUID's canonical string, or a string that
    :func:`fusion.helper.filesystem.safe_segment` passes unchanged (else UnsafePathError)."""
    if isinstance(key, UUID):
        return str(key)
    return safe_segment(key)


def key_dir(root: Path, key: UUID | str) -> Path:
    """``root/<key>``, refusing a planted symlink that would lead out of ``root``."""
    return safe_join(root, key_name(key))


def list_key_dirs(root: Path) -> list[str]:
    """Keys of the sub-directories of ``root`` (sorted).

    Hidden names (temporaries, trees being removed), symlinks, files and names
    no key could have are left out.
    """
    try:
        with os.scandir(root) as entries:
            names = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    keys = []
    for name in names:
        try:
            keys.append(safe_segment(name))
        except UnsafePathError:
            continue
    return sorted(keys)


def remove_tree(path: Path) -> bool:
    """Remove a directory tree so that listings never see it half removed.

    It is first renamed to a hidden name (atomic), then deleted. False when
    it did not exist.
    """
    doomed = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_REMOVING_SUFFIX}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return False
    fsync_directory(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def purge_leftovers(directory: Path, older_than: float) -> int:
    """Delete temporaries and half-removed trees older than ``older_than`` seconds.

    Only names this module and fusion.helper.filesystem create are touched;
    the age guard spares the temporary of a write still in progress.
    """
    limit = time.time() - older_than
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        name = entry.name
        if not name.startswith("."):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime > limit:
                continue
            if name.endswith(_REMOVING_SUFFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
            elif name.endswith(_TEMP_SUFFIX) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


async def atomic_write_stream(path: Path, chunks: AsyncIterable[bytes]) -> int:
    """Stream ``chunks`` into ``path`` atomically; returns the bytes written.

    Same rules as fusion.helper.filesystem.atomic_write (temporary beside the
    target, fsync, rename, fsync of the directory), for data too big to hold
    in memory. Every file operation runs in a worker thread.
    """
    fobj, temp = await asyncio.to_thread(_open_temp, path)
    size = 0
    try:
        try:
            async for chunk in chunks:
                if chunk:
                    # Buffered: write() takes the whole chunk (a raw write may not).
                    await asyncio.to_thread(fobj.write, chunk)
                    size += len(chunk)
            await asyncio.to_thread(_flush_and_sync, fobj)
        finally:
            await asyncio.to_thread(fobj.close)
        await asyncio.to_thread(_commit, temp, path)
    except BaseException:
        await asyncio.to_thread(_discard, temp)
        raise
    return size


def _open_temp(path: Path) -> tuple[BinaryIO, Path]:
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return os.fdopen(os.open(temp, flags, 0o644), "wb"), temp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _flush_and_sync(fobj: BinaryIO) -> None:
    fobj.flush()
    os.fsync(fobj.fileno())


def _commit(temp: Path, path: Path) -> None:
    os.replace(temp, path)
    fsync_directory(path.parent)


def _discard(temp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
