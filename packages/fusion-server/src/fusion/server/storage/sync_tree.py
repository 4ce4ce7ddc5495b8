"""The sync tree: one directory per case for what a synchronizer keeps, with its state."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final, Generic, Literal, TypeVar, overload
from uuid import UUID

import msgspec

from fusion.concept import Case, Concept, ConceptError, UTCDateTime, utcnow
from fusion.helper.filesystem import atomic_write, fsync_directory, safe_filename, safe_join
from fusion.server.storage._files import guid_dir, list_guid_dirs, purge_leftovers, remove_tree

__all__ = ["SyncLayout", "SyncState", "SyncTree", "case_folder_name"]

SyncLayout = Literal["guid", "named"]
"""``guid``: ``<root>/<case guid>/``; ``named``: ``<root>/[<tsid>] <name>/``."""

# In the named layout: where the states live, and the file naming a folder's case.
_STATE_DIR: Final = ".fusion-state"
_MARKER: Final = ".fusion-case"
_MAX_NAME_BYTES: Final = 255
_SUFFIXED: Final = re.compile(r".* \(([0-9]+)\)")


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
    folder: str | None = None
    """The case's folder in the ``named`` layout (kept by :class:`SyncTree`)."""


SyncStateT = TypeVar("SyncStateT", bound=SyncState)


def case_folder_name(case: Case) -> str:
    """``[<tsid>] <name>`` of a case, safe as one folder name.

    Made safe by :func:`fusion.helper.filesystem.safe_filename` (separators in
    the tsid or name become ``_``, controls and reserved characters too, at
    most 255 bytes). A case with no tsid uses its GUID: ``[<guid>] <name>``;
    a case with no name is ``[<tsid>]``.
    """
    tsid = case.tsid or str(case.guid)
    raw = f"[{tsid}] {case.name}" if case.name else f"[{tsid}]"
    # safe_filename keeps the last path component: a "/" in a tsid is not a separator here.
    return safe_filename(raw.replace("/", "_").replace("\\", "_"), fallback=str(case.guid))


class SyncTree(Generic[SyncStateT]):
    """One directory per case for what a synchronizer keeps, and a state file per case.

    Two layouts (``layout``):

    ``guid`` (the default)::

        <root>/<case guid>/state.json     the state, beside the case's files

    ``named``, the human-readable layout services share with analysts::

        <root>/[<tsid>] <name>/           the case's folder (case_folder_name)
        <root>/[<tsid>] <name>/01 - <section>/   the numbered sections declared
        <root>/.fusion-state/<case guid>/state.json

    In the named layout the folder follows the case: :meth:`ensure_case_folder`
    renames it (content kept) when the case's tsid or name changed, and two
    cases whose names collide get distinct folders (``[T-1] host (2)``). Each
    folder holds a ``.fusion-case`` file naming its case's GUID, so the tree
    finds it again after a crash or a rename by hand. One process owns a tree
    (the synchronizer); it is not meant to be reorganised by several at once.

    The synchronizer's job keeps whatever it fetches for a case in its folder;
    the state file records the last sync, the last error and the service's
    own fields, and is replaced atomically. :meth:`prune` removes the folders
    and states of cases that no longer exist. Every method runs its file
    operations in a worker thread.
    """

    @overload
    def __init__(
        self: SyncTree[SyncState],
        root: Path | str,
        *,
        state_filename: str = ...,
        layout: SyncLayout = ...,
        sections: Sequence[str] = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        root: Path | str,
        state_type: type[SyncStateT],
        *,
        state_filename: str = ...,
        layout: SyncLayout = ...,
        sections: Sequence[str] = ...,
    ) -> None: ...

    def __init__(
        self,
        root: Path | str,
        state_type: type[SyncState] = SyncState,
        *,
        state_filename: str = "state.json",
        layout: SyncLayout = "guid",
        sections: Sequence[str] = (),
    ) -> None:
        """``sections``: labels of the numbered sub-folders every case folder gets,
        in order (``["evidence", "reports"]``: ``01 - evidence``, ``02 - reports``)."""
        if not state_filename or Path(state_filename).name != state_filename:
            raise ValueError(f"state_filename must be a bare file name, not {state_filename!r}")
        if state_filename.startswith("."):
            # Hidden names are reserved for temporaries that purge_leftovers() deletes.
            raise ValueError(f"state_filename may not start with a dot: {state_filename!r}")
        if layout not in ("guid", "named"):
            raise ValueError(f"layout must be 'guid' or 'named', not {layout!r}")
        for label in sections:
            if not label or safe_filename(label, fallback="") != label:
                raise ValueError(f"section label {label!r} is not a safe folder name")
        if len(set(sections)) != len(sections):
            raise ValueError(f"section labels repeat: {list(sections)}")
        self.root = Path(root)
        # The overloads tie state_type to SyncStateT; the implementation cannot say so.
        self.state_type: type[SyncStateT] = state_type  # type: ignore[assignment]
        self.state_filename = state_filename
        self.layout: SyncLayout = layout
        self.sections: tuple[str, ...] = tuple(sections)
        self._state_root = self.root if layout == "guid" else self.root / _STATE_DIR

    # -- paths ----------------------------------------------------------------------
    def case_dir(self, case_guid: UUID | str) -> Path:
        """The directory of the case's state: ``<root>/<case_guid>`` in the guid layout
        (where the case's files go too), ``<root>/.fusion-state/<case_guid>`` in the
        named one (GUIDs only; symlinks out of root are refused)."""
        return guid_dir(self._state_root, case_guid)

    def section_name(self, label: str) -> str:
        """``NN - <label>`` of a declared section (ValueError for another label)."""
        try:
            index = self.sections.index(label)
        except ValueError:
            raise ValueError(f"{label!r} is not a section of this tree {self.sections}") from None
        return f"{index + 1:02d} - {label}"

    def state_path(self, case_guid: UUID | str) -> Path:
        return self.case_dir(case_guid) / self.state_filename

    # -- directories ------------------------------------------------------------------
    async def ensure_case_dir(self, case_guid: UUID | str) -> Path:
        """Create :meth:`case_dir` if needed; returns it (the case's folder in the guid
        layout; in the named one, use :meth:`ensure_case_folder` for that)."""
        return await asyncio.to_thread(self._ensure_case_dir, case_guid)

    def _ensure_case_dir(self, case_guid: UUID | str) -> Path:
        directory = self.case_dir(case_guid)
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            fsync_directory(directory.parent)
        return directory

    async def ensure_case_folder(self, case: Case) -> Path:
        """The case's folder, created (with its sections) if needed; returns it.

        Guid layout: ``<root>/<guid>``. Named layout: ``<root>/<case_folder_name>``,
        renamed with its content when the case's tsid or name changed; when that
        name is another case's (or any other entry's), `` (2)``, `` (3)``... is added.
        """
        return await asyncio.to_thread(self._ensure_case_folder, case)

    async def ensure_section(self, case: Case, label: str) -> Path:
        """``<case folder>/NN - <label>`` of a declared section, created if needed."""
        name = self.section_name(label)
        return (await self.ensure_case_folder(case)) / name

    def _ensure_case_folder(self, case: Case) -> Path:
        if self.layout == "guid":
            folder = self._ensure_case_dir(case.guid)
        else:
            folder = self._ensure_named_folder(case)
        for label in self.sections:
            (folder / self.section_name(label)).mkdir(exist_ok=True)
        return folder

    def _ensure_named_folder(self, case: Case) -> Path:
        state = self._read_state(case.guid)
        current = self._find_folder(case.guid, state.folder)
        desired = case_folder_name(case)
        if current is not None and _is_variant(current, desired):
            name = current
        else:
            name = self._free_name(desired)
            target = safe_join(self.root, name)
            if current is None:
                target.mkdir(parents=True)
                atomic_write(target / _MARKER, f"{case.guid}\n".encode())
            else:
                # Same directory: an atomic rename, everything in it kept.
                os.rename(safe_join(self.root, current), target)
            fsync_directory(self.root)
        if state.folder != name:
            state.folder = name
            self._write_state(case.guid, msgspec.json.format(state.to_json(), indent=2) + b"\n")
        return safe_join(self.root, name)

    def _find_folder(self, case_guid: UUID, hint: str | None) -> str | None:
        """Name of the folder whose marker names ``case_guid``: ``hint`` when it still
        does, else found by reading the markers (after a crash or a rename by hand)."""
        if hint is not None and self._marker(hint) == case_guid:
            return hint
        try:
            with os.scandir(self.root) as entries:
                names = sorted(
                    entry.name
                    for entry in entries
                    if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
                )
        except FileNotFoundError:
            return None
        return next((name for name in names if self._marker(name) == case_guid), None)

    def _marker(self, name: str) -> UUID | None:
        try:
            return UUID((self.root / name / _MARKER).read_text().strip())
        except (OSError, ValueError):
            return None

    def _free_name(self, desired: str) -> str:
        number = 1
        while True:
            name = _numbered(desired, number)
            if not os.path.lexists(self.root / name):
                return name
            number += 1

    async def enumerate_cases(self) -> list[UUID]:
        """GUIDs of the cases that have a state directory (sorted)."""
        return await asyncio.to_thread(list_guid_dirs, self._state_root)

    async def remove_case(self, case_guid: UUID | str) -> bool:
        """Remove a case's folder, state and all they hold; False when it had none."""
        return await asyncio.to_thread(self._remove_case, case_guid)

    def _remove_case(self, case_guid: UUID | str) -> bool:
        state_dir = self.case_dir(case_guid)
        removed = False
        if self.layout == "named":
            try:
                hint = self._read_state(case_guid).folder
            except ConceptError:
                hint = None  # a broken state file: the markers still say which folder
            folder = self._find_folder(UUID(str(case_guid)), hint)
            if folder is not None:
                removed = remove_tree(safe_join(self.root, folder))
        return remove_tree(state_dir) or removed

    async def prune(self, existing: Iterable[UUID]) -> list[UUID]:
        """Remove the directories of every case not in ``existing``; returns their GUIDs.

        Call it with the GUIDs of the cases storage still has, after a pass.
        """
        keep = frozenset(existing)
        return await asyncio.to_thread(self._prune, keep)

    def _prune(self, keep: frozenset[UUID]) -> list[UUID]:
        removed = []
        for case_guid in list_guid_dirs(self._state_root):
            if case_guid not in keep and self._remove_case(case_guid):
                removed.append(case_guid)
        return removed

    async def purge_leftovers(self, older_than: float = 3600.0) -> int:
        """Delete temporaries and half-removed directories a crash left, if old enough."""
        return await asyncio.to_thread(self._purge_leftovers, older_than)

    def _purge_leftovers(self, older_than: float) -> int:
        removed = purge_leftovers(self.root, older_than)
        if self.layout == "named":
            removed += purge_leftovers(self._state_root, older_than)
        for case_guid in list_guid_dirs(self._state_root):
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


def _numbered(desired: str, number: int) -> str:
    """``desired`` for 1, ``desired (n)`` after, cut so that it stays one name."""
    if number == 1:
        return desired
    suffix = f" ({number})"
    room = _MAX_NAME_BYTES - len(suffix.encode())
    return desired.encode()[:room].decode(errors="ignore").rstrip(" .") + suffix


def _is_variant(name: str, desired: str) -> bool:
    """Whether ``name`` is ``desired`` or one of its numbered variants."""
    if name == desired:
        return True
    match = _SUFFIXED.fullmatch(name)
    return match is not None and name == _numbered(desired, int(match[1]))
