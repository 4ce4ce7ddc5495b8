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
    guid_dir,
    list_guid_dirs,
    purge_leftovers,
    remove_tree,
)

__all__ = ["ConceptStorage"]

ConceptT = TypeVar("ConceptT", bound=Concept)

_METADATA = "metadata.json"
_DATA = "data"
_DATA_DIR = "data.d"


class ConceptStorage(Generic[ConceptT]):
    """Objects under ``root``, one directory each, named by the object's GUID::

        <root>/<guid>/metadata.json   the object's Concept (``metadata_type``)
        <root>/<guid>/data            one file (a sample, an archive...)
        <root>/<guid>/data.d/         a folder of files (extracted artifacts...)

    Every write is atomic (temporary file beside the target, fsync, rename):
    after a crash a reader finds the old or the new content, never a part.
    Object names are GUIDs only, and paths inside ``data.d`` may not leave
    it: anything else raises :class:`fusion.helper.filesystem.UnsafePathError`
    (a ValueError). Every method runs its file operations in a worker thread.
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
    def object_dir(self, guid: UUID | str) -> Path:
        """``<root>/<guid>`` (refuses non-GUID names and symlinks out of root)."""
        return guid_dir(self.root, guid)

    def metadata_path(self, guid: UUID | str) -> Path:
        return self.object_dir(guid) / _METADATA

    def data_path(self, guid: UUID | str) -> Path:
        return self.object_dir(guid) / _DATA

    def data_dir(self, guid: UUID | str) -> Path:
        return self.object_dir(guid) / _DATA_DIR

    def data_dir_path(self, guid: UUID | str, relative: str) -> Path:
        """A path inside ``data.d``; ``..``, absolute paths and escaping symlinks are refused."""
        return safe_join(self.data_dir(guid), relative)

    # -- objects ------------------------------------------------------------------
    async def enumerate(self) -> list[UUID]:
        """GUIDs of the stored objects (sorted)."""
        return await asyncio.to_thread(list_guid_dirs, self.root)

    async def enumerate_metadata(self) -> list[tuple[UUID, ConceptT]]:
        """``(guid, metadata)`` of every object that has metadata."""
        return await asyncio.to_thread(self._enumerate_metadata)

    def _enumerate_metadata(self) -> list[tuple[UUID, ConceptT]]:
        result = []
        for guid in list_guid_dirs(self.root):
            metadata = self._read_metadata(guid)
            if metadata is not None:
                result.append((guid, metadata))
        return result

    async def exists(self, guid: UUID | str) -> bool:
        return await asyncio.to_thread(lambda: self.object_dir(guid).is_dir())

    async def delete(self, guid: UUID | str) -> bool:
        """Remove the object and everything in it; False when it did not exist."""
        return await asyncio.to_thread(lambda: remove_tree(self.object_dir(guid)))

    async def purge_leftovers(self, older_than: float = 3600.0) -> int:
        """Delete what crashed writers left (temporaries, half-removed objects).

        Only items older than ``older_than`` seconds go, so a write in
        progress keeps its temporary file. Returns how many were removed.
        """
        return await asyncio.to_thread(self._purge_leftovers, older_than)

    def _purge_leftovers(self, older_than: float) -> int:
        removed = purge_leftovers(self.root, older_than)
        for guid in list_guid_dirs(self.root):
            removed += purge_leftovers(self.object_dir(guid), older_than)
            # Atomic writes into data.d leave their temporaries in sub-folders too.
            for directory, dirnames, _ in os.walk(self.data_dir(guid)):
                dirnames[:] = [name for name in dirnames if not name.startswith(".")]
                removed += purge_leftovers(Path(directory), older_than)
        return removed

    # -- metadata -------------------------------------------------------------------
    async def write_metadata(self, guid: UUID | str, metadata: ConceptT) -> None:
        """Create the object if needed and replace its ``metadata.json`` atomically."""
        data = msgspec.json.format(metadata.to_json(), indent=2) + b"\n"
        await asyncio.to_thread(self._write_metadata, guid, data)

    def _write_metadata(self, guid: UUID | str, data: bytes) -> None:
        directory = self._ensure_object_dir(guid)
        atomic_write(directory / _METADATA, data)

    async def read_metadata(self, guid: UUID | str) -> ConceptT | None:
        """The object's metadata; None when it has none.

        A file that does not decode raises :class:`ConceptError` naming it.
        """
        return await asyncio.to_thread(self._read_metadata, guid)

    def _read_metadata(self, guid: UUID | str) -> ConceptT | None:
        path = self.metadata_path(guid)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return self.metadata_type.from_json(raw)
        except ConceptError as exc:
            raise ConceptError(f"{path}: {exc}") from exc

    # -- data -----------------------------------------------------------------------
    async def write_data(self, guid: UUID | str, data: bytes | AsyncIterable[bytes]) -> int:
        """Replace the object's ``data`` file atomically; returns its size.

        Give bytes, or an async iterable of chunks (an upload) to stream
        without holding the whole file in memory.
        """
        directory = await asyncio.to_thread(self._ensure_object_dir, guid)
        if isinstance(data, bytes | bytearray | memoryview):
            await asyncio.to_thread(atomic_write, directory / _DATA, bytes(data))
            return len(data)
        return await atomic_write_stream(directory / _DATA, data)

    async def read_data(self, guid: UUID | str) -> bytes | None:
        """The whole ``data`` file (None when absent); stream big ones from :meth:`data_path`."""
        return await asyncio.to_thread(_read_or_none, self.data_path(guid))

    async def write_data_file(
        self, guid: UUID | str, relative: str, data: bytes | AsyncIterable[bytes]
    ) -> Path:
        """Write a file inside ``data.d`` atomically (sub-folders created); returns its path."""
        path = await asyncio.to_thread(self._prepare_data_file, guid, relative)
        if isinstance(data, bytes | bytearray | memoryview):
            await asyncio.to_thread(atomic_write, path, bytes(data))
        else:
            await atomic_write_stream(path, data)
        return path

    async def read_data_file(self, guid: UUID | str, relative: str) -> bytes | None:
        """A file of ``data.d`` (None when absent)."""
        return await asyncio.to_thread(lambda: _read_or_none(self.data_dir_path(guid, relative)))

    async def list_data_files(self, guid: UUID | str) -> list[str]:
        """Paths (relative, ``/``-separated, sorted) of the regular files in ``data.d``.

        Temporaries of writes in progress are left out.
        """
        return await asyncio.to_thread(self._list_data_files, guid)

    def _list_data_files(self, guid: UUID | str) -> list[str]:
        base = self.data_dir(guid)
        found: list[str] = []
        for directory, dirnames, filenames in os.walk(base):
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            for name in filenames:
                path = Path(directory, name)
                if not name.startswith(".") and not path.is_symlink():
                    found.append(path.relative_to(base).as_posix())
        return sorted(found)

    def _prepare_data_file(self, guid: UUID | str, relative: str) -> Path:
        path = self.data_dir_path(guid, relative)
        base = self.data_dir(guid)
        if path == base:
            raise ValueError(f"{relative!r} names data.d itself, not a file in it")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _ensure_object_dir(self, guid: UUID | str) -> Path:
        directory = self.object_dir(guid)
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
