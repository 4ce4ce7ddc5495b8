"""Per-object directories for a service's files: metadata, one data file, a data folder."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Generic, TypeVar, overload
from uuid import UUID

import msgspec

from fusion.concept import Concept, ConceptError
from fusion.helper.filesystem import atomic_write, fsync_directory, safe_join
from fusion.server.storage._files import (
    atomic_write_stream,
    key_dir,
    list_key_dirs,
    purge_leftovers,
    remove_tree,
)

__all__ = ["ConceptStorage"]

ConceptT = TypeVar("ConceptT", bound=Concept)

_METADATA = "metadata.json"
_DATA = "data"
_DATA_DIR = "data.d"


class ConceptStorage(Generic[ConceptT]):
    """Objects under ``root``, one directory each, named by the object's key::

        <root>/<key>/metadata.json   the object's Concept (``metadata_type``)
        <root>/<key>/data            one file (a sample, an archive...)
        <root>/<key>/data.d/         a folder of files (extracted artifacts...)

    A key is any string that :func:`fusion.helper.filesystem.safe_segment`
    passes unchanged (an analyzer's name, a SHA-256 hex digest, a GUID), or a
    UUID (its canonical string is the key). Keys are never altered, so two
    keys never share a directory: a key with a separator, ``..``, a NUL or a
    control character, a leading dot, upper-case letters (case-insensitive
    filesystems would fold them), more than 255 bytes... raises
    :class:`fusion.helper.filesystem.UnsafePathError` (a ValueError, which the
    envelope answers 400) before anything is touched. Paths inside ``data.d``
    may not leave it either.

    Every write is atomic (temporary file beside the target, fsync, rename):
    after a crash a reader finds the old or the new content, never a part.
    Every method runs its file operations in a worker thread.
    """

    @overload
    def __init__(self: ConceptStorage[Concept], root: Path | str) -> None: ...

    @overload
    def __init__(self, root: Path | str, metadata_type: type[ConceptT]) -> None: ...

    def __init__(self, root: Path | str, metadata_type: type[Concept] = Concept) -> None:
        self.root = Path(root)
        # The overloads tie metadata_type to ConceptT; the implementation cannot say so.
        self.metadata_type: type[ConceptT] = metadata_type  # type: ignore[assignment]

    # -- paths (no I/O besides resolving symlinks) --------------------------------
    def object_dir(self, key: UUID | str) -> Path:
        """``<root>/<key>`` (refuses unsafe keys and symlinks out of root)."""
        return key_dir(self.root, key)

    def metadata_path(self, key: UUID | str) -> Path:
        return self.object_dir(key) / _METADATA

    def data_path(self, key: UUID | str) -> Path:
        return self.object_dir(key) / _DATA

    def data_dir(self, key: UUID | str) -> Path:
        return self.object_dir(key) / _DATA_DIR

    def data_dir_path(self, key: UUID | str, relative: str) -> Path:
        """A path inside ``data.d``; ``..``, absolute paths and escaping symlinks are refused."""
        return safe_join(self.data_dir(key), relative)

    # -- objects ------------------------------------------------------------------
    async def enumerate(self) -> list[str]:
        """Keys of the stored objects (sorted; a UUID key is listed as its string)."""
        return await asyncio.to_thread(list_key_dirs, self.root)

    async def enumerate_metadata(self) -> list[tuple[str, ConceptT]]:
        """``(key, metadata)`` of every object that has metadata (sorted by key)."""
        return await asyncio.to_thread(self._enumerate_metadata)

    def _enumerate_metadata(self) -> list[tuple[str, ConceptT]]:
        result = []
        for key in list_key_dirs(self.root):
            metadata = self._read_metadata(key)
            if metadata is not None:
                result.append((key, metadata))
        return result

    async def exists(self, key: UUID | str) -> bool:
        return await asyncio.to_thread(lambda: self.object_dir(key).is_dir())

    async def delete(self, key: UUID | str) -> bool:
        """Remove the object and everything in it; False when it did not exist."""
        return await asyncio.to_thread(lambda: remove_tree(self.object_dir(key)))

    async def purge_leftovers(self, older_than: float = 3600.0) -> int:
        """Delete what crashed writers left (temporaries, half-removed objects).

        Only items older than ``older_than`` seconds go, so a write in
        progress keeps its temporary file. Returns how many were removed.
        """
        return await asyncio.to_thread(self._purge_leftovers, older_than)

    def _purge_leftovers(self, older_than: float) -> int:
        removed = purge_leftovers(self.root, older_than)
        for key in list_key_dirs(self.root):
            removed += purge_leftovers(self.object_dir(key), older_than)
            # Atomic writes into data.d leave their temporaries in sub-folders too.
            for directory, dirnames, _ in os.walk(self.data_dir(key)):
                dirnames[:] = [name for name in dirnames if not name.startswith(".")]
                removed += purge_leftovers(Path(directory), older_than)
        return removed

    # -- metadata -------------------------------------------------------------------
    async def write_metadata(self, key: UUID | str, metadata: ConceptT) -> None:
        """Create the object if needed and replace its ``metadata.json`` atomically."""
        data = msgspec.json.format(metadata.to_json(), indent=2) + b"\n"
        await asyncio.to_thread(self._write_metadata, key, data)

    def _write_metadata(self, key: UUID | str, data: bytes) -> None:
        directory = self._ensure_object_dir(key)
        atomic_write(directory / _METADATA, data)

    async def read_metadata(self, key: UUID | str) -> ConceptT | None:
        """The object's metadata; None when it has none.

        A file that does not decode raises :class:`ConceptError` naming it.
        """
        return await asyncio.to_thread(self._read_metadata, key)

    def _read_metadata(self, key: UUID | str) -> ConceptT | None:
        path = self.metadata_path(key)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return self.metadata_type.from_json(raw)
        except ConceptError as exc:
            raise ConceptError(f"{path}: {exc}") from exc

    # -- data -----------------------------------------------------------------------
    async def write_data(self, key: UUID | str, data: bytes | AsyncIterable[bytes]) -> int:
        """Replace the object's ``data`` file atomically; returns its size.

        Give bytes, or an async iterable of chunks (an upload) to stream
        without holding the whole file in memory.
        """
        directory = await asyncio.to_thread(self._ensure_object_dir, key)
        if isinstance(data, bytes | bytearray | memoryview):
            await asyncio.to_thread(atomic_write, directory / _DATA, bytes(data))
            return len(data)
        return await atomic_write_stream(directory / _DATA, data)

    async def read_data(self, key: UUID | str) -> bytes | None:
        """The whole ``data`` file (None when absent); stream big ones from :meth:`data_path`."""
        return await asyncio.to_thread(_read_or_none, self.data_path(key))

    async def write_data_file(
        self, key: UUID | str, relative: str, data: bytes | AsyncIterable[bytes]
    ) -> Path:
        """Write a file inside ``data.d`` atomically (sub-folders created); returns its path."""
        path = await asyncio.to_thread(self._prepare_data_file, key, relative)
        if isinstance(data, bytes | bytearray | memoryview):
            await asyncio.to_thread(atomic_write, path, bytes(data))
        else:
            await atomic_write_stream(path, data)
        return path

    async def read_data_file(self, key: UUID | str, relative: str) -> bytes | None:
        """A file of ``data.d`` (None when absent)."""
        return await asyncio.to_thread(lambda: _read_or_none(self.data_dir_path(key, relative)))

    async def list_data_files(self, key: UUID | str) -> list[str]:
        """Paths (relative, ``/``-separated, sorted) of the regular files in ``data.d``.

        Temporaries of writes in progress are left out.
        """
        return await asyncio.to_thread(self._list_data_files, key)

    def _list_data_files(self, key: UUID | str) -> list[str]:
        base = self.data_dir(key)
        found: list[str] = []
        for directory, dirnames, filenames in os.walk(base):
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            for name in filenames:
                path = Path(directory, name)
                if not name.startswith(".") and not path.is_symlink():
                    found.append(path.relative_to(base).as_posix())
        return sorted(found)

    def _prepare_data_file(self, key: UUID | str, relative: str) -> Path:
        path = self.data_dir_path(key, relative)
        base = self.data_dir(key)
        if path == base:
            raise ValueError(f"{relative!r} names data.d itself, not a file in it")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _ensure_object_dir(self, key: UUID | str) -> Path:
        directory = self.object_dir(key)
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            # The new entry in root must survive a crash as well as the files in it.
            fsync_directory(directory.parent)
        return directory


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
