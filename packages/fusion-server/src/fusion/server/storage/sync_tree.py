"""The sync tree: one directory per case for what a synchronizer keeps, with its state."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Generic, TypeVar, overload
from uuid import UUID

import msgspec

from fusion.concept import Concept, ConceptError, UTCDateTime, utcnow
from fusion.helper.filesystem import atomic_write, fsync_directory
from fusion.server.storage._files import guid_dir, list_guid_dirs, purge_leftovers, remove_tree

__all__ = ["SyncState", "SyncTree"]


class SyncState(Concept, kw_only=True):
    """What a synchronizer remembers about one case.

    Services subclass it with fields of their own (a cursor, a remote
    revision...) and give the subclass to :class:`SyncTree`.
    """

    last_sync: UTCDateTime | None = None
    """End of the last successful sync."""
    last_attempt: UTCDateTime | None = None
    """End of the last sync, successful or not."""
    last_error: str | None = None
    """Why the last sync failed; None after a success."""


SyncStateT = TypeVar("SyncStateT", bound=SyncState)


class SyncTree(Generic[SyncStateT]):
    """``<root>/<case_guid>/`` per case, each with a state file (``state.json``).

    The synchronizer's job keeps whatever it fetches for a case in that case's
    directory; the state file records the last sync, the last error and the
    service's own fields, and is replaced atomically. :meth:`prune` removes
    the directories of cases that no longer exist. Every method runs its file
    operations in a worker thread.
    """

    @overload
    def __init__(
        self: SyncTree[SyncState], root: Path | str, *, state_filename: str = ...
    ) -> None: ...

    @overload
    def __init__(
        self, root: Path | str, state_type: type[SyncStateT], *, state_filename: str = ...
    ) -> None: ...

    def __init__(
        self,
        root: Path | str,
        state_type: type[SyncState] = SyncState,
        *,
        state_filename: str = "state.json",
    ) -> None:
        if not state_filename or Path(state_filename).name != state_filename:
            raise ValueError(f"state_filename must be a bare file name, not {state_filename!r}")
        if state_filename.startswith("."):
            # Hidden names are reserved for temporaries that purge_leftovers() deletes.
            raise ValueError(f"state_filename may not start with a dot: {state_filename!r}")
        self.root = Path(root)
        # The overloads tie state_type to SyncStateT; the implementation cannot say so.
        self.state_type: type[SyncStateT] = state_type  # type: ignore[assignment]
        self.state_filename = state_filename

    # -- paths ----------------------------------------------------------------------
    def case_dir(self, case_guid: UUID | str) -> Path:
        """``<root>/<case_guid>`` (GUIDs only; symlinks out of root are refused)."""
        return guid_dir(self.root, case_guid)

    def state_path(self, case_guid: UUID | str) -> Path:
        return self.case_dir(case_guid) / self.state_filename

    # -- directories ------------------------------------------------------------------
    async def ensure_case_dir(self, case_guid: UUID | str) -> Path:
        """Create the case's directory if needed; returns it."""
        return await asyncio.to_thread(self._ensure_case_dir, case_guid)

    def _ensure_case_dir(self, case_guid: UUID | str) -> Path:
        directory = self.case_dir(case_guid)
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            fsync_directory(directory.parent)
        return directory

    async def enumerate_cases(self) -> list[UUID]:
        """GUIDs of the cases that have a directory (sorted)."""
        return await asyncio.to_thread(list_guid_dirs, self.root)

    async def remove_case(self, case_guid: UUID | str) -> bool:
        """Remove a case's directory and all it holds; False when it had none."""
        return await asyncio.to_thread(lambda: remove_tree(self.case_dir(case_guid)))

    async def prune(self, existing: Iterable[UUID]) -> list[UUID]:
        """Remove the directories of every case not in ``existing``; returns their GUIDs.

        Call it with the GUIDs of the cases storage still has, after a pass.
        """
        keep = frozenset(existing)
        return await asyncio.to_thread(self._prune, keep)

    def _prune(self, keep: frozenset[UUID]) -> list[UUID]:
        removed = []
        for case_guid in list_guid_dirs(self.root):
            if case_guid not in keep and remove_tree(self.case_dir(case_guid)):
                removed.append(case_guid)
        return removed

    async def purge_leftovers(self, older_than: float = 3600.0) -> int:
        """Delete temporaries and half-removed directories a crash left, if old enough."""
        return await asyncio.to_thread(self._purge_leftovers, older_than)

    def _purge_leftovers(self, older_than: float) -> int:
        removed = purge_leftovers(self.root, older_than)
        for case_guid in list_guid_dirs(self.root):
            removed += purge_leftovers(self.case_dir(case_guid), older_than)
        return removed

    # -- state --------------------------------------------------------------------------
    async def read_state(self, case_guid: UUID | str) -> SyncStateT:
        """The case's state; a fresh default state when it was never written.

        A state file that does not decode raises :class:`ConceptError` naming it.
        """
        return await asyncio.to_thread(self._read_state, case_guid)

    def _read_state(self, case_guid: UUID | str) -> SyncStateT:
        path = self.state_path(case_guid)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return self.state_type()
        try:
            return self.state_type.from_json(raw)
        except ConceptError as exc:
            raise ConceptError(f"{path}: {exc}") from exc

    async def write_state(self, case_guid: UUID | str, state: SyncStateT) -> None:
        """Replace the case's state file atomically (the directory is created if needed)."""
        data = msgspec.json.format(state.to_json(), indent=2) + b"\n"
        await asyncio.to_thread(self._write_state, case_guid, data)

    def _write_state(self, case_guid: UUID | str, data: bytes) -> None:
        directory = self._ensure_case_dir(case_guid)
        atomic_write(directory / self.state_filename, data)

    async def record_success(
        self,
        case_guid: UUID | str,
        state: SyncStateT | None = None,
        *,
        when: datetime | None = None,
    ) -> SyncStateT:
        """Mark a sync as done: ``last_sync`` and ``last_attempt`` set, ``last_error`` cleared.

        ``state`` carries the service's fields to store (default: the stored state).
        """
        if state is None:
            state = await self.read_state(case_guid)
        now = _aware(when)
        state.last_sync = now
        state.last_attempt = now
        state.last_error = None
        await self.write_state(case_guid, state)
        return state

    async def record_failure(
        self, case_guid: UUID | str, error: BaseException | str, *, when: datetime | None = None
    ) -> SyncStateT:
        """Mark a sync as failed: ``last_error`` and ``last_attempt`` set, the rest kept."""
        state = await self.read_state(case_guid)
        state.last_attempt = _aware(when)
        state.last_error = error if isinstance(error, str) else _describe(error)
        await self.write_state(case_guid, state)
        return state


def _aware(when: datetime | None) -> datetime:
    if when is None:
        return utcnow()
    if when.tzinfo is None:
        raise ValueError("sync times must be timezone-aware (use fusion.concept.utcnow())")
    return when


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
