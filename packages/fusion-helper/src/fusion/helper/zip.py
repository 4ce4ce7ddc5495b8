"""Zip archives: written atomically, extracted defensively.

:func:`extract_zip` treats every archive as hostile (uploaded samples, collected
evidence): it refuses paths leaving the target (zip slip, absolute paths, drive
letters, backslashes), links and device entries, and bombs (too many entries,
too many bytes declared or actually produced, too high a compression ratio).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from fusion.helper.filesystem import _commit_temp, _discard, _open_temp_beside

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TOTAL_SIZE",
    "UnsafeZipError",
    "create_zip",
    "extract_zip",
]

DEFAULT_MAX_TOTAL_SIZE = 4 * 1024**3
DEFAULT_MAX_RATIO = 100.0
DEFAULT_MAX_ENTRIES = 10_000
# Below this many bytes an entry's ratio is not checked: small text files of
# repeated content legitimately compress more than 100:1 and cannot hurt.
_RATIO_FLOOR = 1024 * 1024
_CHUNK = 64 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeZipError(ValueError):
    """The archive was refused (or is corrupt); nothing of it is left on disk."""


# ---------------------------------------------------------------------------
# creating
# ---------------------------------------------------------------------------


def _directory_sources(directory: Path) -> list[tuple[Path, str]]:
    # Symlinks are skipped, not followed: an archive of a case directory must
    # not pick up whatever a link points to.
    sources: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            path = base / name
            if path.is_symlink() or not path.is_file():
                continue
            sources.append((path, path.relative_to(directory).as_posix()))
    return sources


def create_zip(
    zip_path: Path | str,
    sources: Iterable[tuple[Path | str, str]] | Path | str,
    *,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """Write ``zip_path`` from ``(path, arcname)`` pairs or from a directory's files.

    The archive is built in a temporary file beside ``zip_path``, fsynced and
    renamed: readers never see a half-written archive, and a failure leaves the
    previous one (if any) in place.
    """
    zip_path = Path(zip_path)
    if isinstance(sources, str | Path):
        directory = Path(sources)
        if not directory.is_dir():
            raise NotADirectoryError(f"{directory} is not a directory")
        pairs: Iterable[tuple[Path | str, str]] = _directory_sources(directory)
    else:
        pairs = sources
    fd, temp = _open_temp_beside(zip_path)
    try:
        with os.fdopen(fd, "wb") as fobj:
            with zipfile.ZipFile(fobj, "w", compression=compression) as archive:
                for path, arcname in pairs:
                    _check_name(arcname)
                    archive.write(path, arcname)
            fobj.flush()
            os.fsync(fobj.fileno())
        _commit_temp(temp, zip_path)
    except BaseException:
        _discard(temp)
        raise
    return zip_path


# ---------------------------------------------------------------------------
# extracting
# ---------------------------------------------------------------------------


def _check_name(name: str) -> PurePosixPath:
    """The relative path of an entry name, or UnsafeZipError."""
    if not name or "\0" in name:
        raise UnsafeZipError(f"entry {name!r}: empty name or NUL byte")
    if "\\" in name:
        raise UnsafeZipError(f"entry {name!r}: backslash in path")
    if name.startswith("/"):
        raise UnsafeZipError(f"entry {name!r}: absolute path")
    if _DRIVE.match(name):
        raise UnsafeZipError(f"entry {name!r}: drive letter in path")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise UnsafeZipError(f"entry {name!r}: '..' in path")
    if not path.parts or path.parts == (".",):
        raise UnsafeZipError(f"entry {name!r}: no file name")
    return path


def _check_type(info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # Unix: the high bits are st_mode
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise UnsafeZipError(f"entry {info.filename!r}: symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeZipError(f"entry {info.filename!r}: special file (mode {oct(mode)})")


def _check_archive(
    entries: list[zipfile.ZipInfo], max_total_size: int, max_ratio: float, max_entries: int
) -> None:
    if len(entries) > max_entries:
        raise UnsafeZipError(f"too many entries: {len(entries)} > {max_entries}")
    declared = 0
    # A path cannot be both a file and a directory (``a`` then ``a/b``, in any order).
    files: dict[PurePosixPath, str] = {}
    directories: dict[PurePosixPath, str] = {}
    for info in entries:
        path = _check_name(info.filename)
        _check_type(info)
        for parent in path.parents[:-1]:  # not the final "."
            directories.setdefault(parent, info.filename)
        (directories if info.is_dir() else files).setdefault(path, info.filename)
        if info.flag_bits & 0x1:
            raise UnsafeZipError(f"entry {info.filename!r}: encrypted entries are not supported")
        declared += info.file_size
        if declared > max_total_size:
            raise UnsafeZipError(f"declared uncompressed size exceeds {max_total_size} bytes")
        if info.file_size > _RATIO_FLOOR and info.file_size > max_ratio * max(
            info.compress_size, 1
        ):
            raise UnsafeZipError(
                f"entry {info.filename!r}: compression ratio above {max_ratio:g}"
                f" ({info.file_size} bytes from {info.compress_size})"
            )
    for path, name in files.items():
        if path in directories:
            raise UnsafeZipError(
                f"entry {name!r} is a file, and a directory for {directories[path]!r}"
            )


def _plan_moves(tree: Path, target: Path, moves: list[tuple[Path, Path, bool]]) -> None:
    """Append the ``(source, destination, replaces)`` renames merging ``tree`` into
    ``target``; UnsafeZipError on a conflict, before anything is moved.

    A directory merges into a real directory, or is renamed whole where nothing
    is; a file replaces a file, or a symbolic link itself (never followed).
    A directory never replaces a file or a link, nor a file a directory.
    """
    for entry in sorted(tree.iterdir()):
        destination = target / entry.name
        if not os.path.lexists(destination):
            moves.append((entry, destination, False))
        elif destination.is_symlink() or not destination.is_dir():
            if entry.is_dir():  # the staging tree holds no links: a real directory
                raise UnsafeZipError(
                    f"cannot replace {destination} with a directory: it is a file or a link"
                )
            moves.append((entry, destination, True))
        elif entry.is_dir():
            _plan_moves(entry, destination, moves)
        else:
            raise UnsafeZipError(f"cannot replace directory {destination} with a file")


def _move_into(tree: Path, target: Path, replaced: Path) -> None:
    """Merge the extracted ``tree`` into ``target``, all or nothing: what a file
    replaces is moved into ``replaced`` first, and every rename is undone if one fails."""
    moves: list[tuple[Path, Path, bool]] = []
    _plan_moves(tree, target, moves)
    done: list[tuple[Path, Path]] = []  # (from, to) of each rename made
    try:
        for index, (source, destination, replaces) in enumerate(moves):
            if replaces:
                backup = replaced / str(index)
                os.replace(destination, backup)
                done.append((destination, backup))
            os.replace(source, destination)
            done.append((source, destination))
    except BaseException:
        for moved_from, moved_to in reversed(done):
            with contextlib.suppress(OSError):
                os.replace(moved_to, moved_from)
        raise


def extract_zip(
    zip_path: Path | str,
    target_dir: Path | str,
    *,
    max_total_size: int = DEFAULT_MAX_TOTAL_SIZE,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> list[Path]:
    """Extract ``zip_path`` into ``target_dir`` (created if missing); returns the files.

    Every entry is checked before anything is written. Data is then extracted into
    a staging directory inside ``target_dir`` while counting the bytes actually
    produced (headers can lie), and only merged into place once the whole archive
    passed: a file replaces a file of the same name (or a symbolic link, which is
    replaced, never followed), a directory merges into a directory. An archive
    holding a path as both a file and a directory, or whose directory meets a
    file or a link of ``target_dir`` (or whose file meets a directory), is
    refused before anything moves. On any refusal :class:`UnsafeZipError` is
    raised and the staging directory removed: nothing is written outside
    ``target_dir`` and nothing partial stays inside; an I/O error while merging
    undoes the renames already made, then propagates. File modes from the
    archive are ignored (no setuid).
    """
    target = Path(target_dir)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UnsafeZipError(f"{zip_path}: not a readable zip archive: {exc}") from exc
    with archive:
        entries = archive.infolist()
        _check_archive(entries, max_total_size, max_ratio, max_entries)
        created = not target.exists()
        target.mkdir(parents=True, exist_ok=True)
        staging = target / f".extract-{os.urandom(6).hex()}"
        staging.mkdir()
        tree, replaced = staging / "tree", staging / "replaced"
        tree.mkdir()
        replaced.mkdir()
        try:
            relative_files = _extract_entries(archive, entries, tree, max_total_size, max_ratio)
            _move_into(tree, target, replaced)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):
                    target.rmdir()  # only when still empty
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return [target / relative for relative in relative_files]


def _extract_entries(
    archive: zipfile.ZipFile,
    entries: list[zipfile.ZipInfo],
    staging: Path,
    max_total_size: int,
    max_ratio: float,
) -> list[PurePosixPath]:
    files: dict[PurePosixPath, None] = {}
    total = 0
    for info in entries:
        relative = _check_name(info.filename)
        destination = staging.joinpath(*relative.parts)
        written = 0
        limit = max(max_ratio * max(info.compress_size, 1), _RATIO_FLOOR)
        try:
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(destination, "wb") as sink:
                while chunk := source.read(_CHUNK):
                    written += len(chunk)
                    total += len(chunk)
                    if total > max_total_size:
                        raise UnsafeZipError(
                            f"uncompressed data exceeds {max_total_size} bytes"
                            f" (while extracting {info.filename!r})"
                        )
                    if written > info.file_size or written > limit:
                        raise UnsafeZipError(
                            f"entry {info.filename!r}: produces more data than declared"
                            " or allowed by the compression ratio"
                        )
                    sink.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise UnsafeZipError(f"entry {info.filename!r}: corrupt or unsupported: {exc}") from exc
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
            raise UnsafeZipError(
                f"entry {info.filename!r}: conflicts with another entry: {exc}"
            ) from exc
        with contextlib.suppress(KeyError):
            del files[relative]
        files[relative] = None
    return list(files)
