"""Filesystem helpers: GUID-named items, sizes and filesystem usage, atomic writes, safe paths
and names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from uuid import UUID

__all__ = [
    "FilesystemUsage",
    "UnsafePathError",
    "atomic_write",
    "atomic_write_async",
    "directory_size",
    "filesystem_usage",
    "fsync_directory",
    "iter_guid_items",
    "safe_filename",
    "safe_join",
    "safe_segment",
]

_GUID_NAME = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


class UnsafePathError(ValueError):
    """A path would leave its root (``..``, absolute, symlink, NUL), or a name is unusable.

    Its message names the offending part, never the root: the envelope shows it (400).
    """


class FilesystemUsage(NamedTuple):
    """Bytes of the whole filesystem holding a path (not of the files under it)."""

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


def filesystem_usage(path: Path | str) -> FilesystemUsage:
    """Total, used and free bytes of the whole filesystem holding ``path``.

    What a service's "space left" check wants; the bytes a directory holds are
    :func:`directory_size` (the older framework's ``disk_usage``).
    """
    usage = shutil.disk_usage(path)
    return FilesystemUsage(usage.total, usage.used, usage.free)


def directory_size(path: Path | str) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed); 0 when missing.

    The older framework called this ``disk_usage``; Fusion has no function of
    that name (its meaning differed between the two).
    """
    try:
        status = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    if stat.S_ISREG(status.st_mode):
        return status.st_size
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
        raise UnsafePathError(f"path {'/'.join(parts)!r} leaves its directory")
    return resolved


_MAX_NAME_BYTES = 255
_MAX_EXTENSION = 16
# Invalid in file names on common systems, or special in a Content-Disposition header.
_RESERVED = frozenset('<>:"|?*;')
# Replaced: control characters (C0, DEL, C1), line and paragraph separators.
_BREAKING_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
# Removed: format characters (bidi overrides and isolates, zero-width marks) and lone
# surrogates: U+202E makes "report\u202egnp.exe" display as "report.exe.png".
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cs"})
_EDGES = re.compile(r"^[\s.]+|[\s.]+$")
_WINDOWS_DEVICE = re.compile(
    r"(con|prn|aux|nul|conin\$|conout\$|(com|lpt)[0-9\u00b9\u00b2\u00b3])(\..*)?", re.I
)


def _clean_char(char: str) -> str:
    category = unicodedata.category(char)
    if category in _INVISIBLE_CATEGORIES:
        return ""
    if category in _BREAKING_CATEGORIES or char in _RESERVED:
        return "_"
    return char


def _truncate(name: str) -> str:
    if len(name.encode()) <= _MAX_NAME_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension) > _MAX_EXTENSION:
        stem, extension = name, ""
    else:
        extension = "." + extension
    room = _MAX_NAME_BYTES - len(extension.encode())
    # Cut on bytes, dropping a character split in half.
    stem = stem.encode()[:room].decode(errors="ignore")
    return _EDGES.sub("", stem) + extension


def safe_filename(name: str | None, fallback: str | None = None) -> str:
    """A file name made from an untrusted claim, safe to create in a directory and to show.

    The one rule set of every name Fusion did not choose (an upload's client name,
    a download's ``Content-Disposition``, the name a client saves a download under):

    - only the last path component is kept (``/`` and ``\\`` both separate);
    - NFC-normalised; control characters (C0, DEL, C1), line and paragraph
      separators and ``< > : " | ? * ;`` become ``_``;
    - format characters (bidi controls, zero-width marks) and lone surrogates are removed;
    - leading and trailing dots and white space are stripped: no hidden file,
      no ``.`` or ``..``;
    - a Windows device name (``CON``, ``nul.txt``, ``COM1``) gets a ``_`` prefix;
    - at most 255 UTF-8 bytes, cut in the stem so that a short extension stays.

    When nothing usable is left: ``fallback``, or :class:`UnsafePathError` without one.
    """
    cleaned = ""
    if name:
        last = name.replace("\\", "/").rsplit("/", 1)[-1]
        cleaned = "".join(_clean_char(char) for char in unicodedata.normalize("NFC", last))
        cleaned = _truncate(_EDGES.sub("", cleaned))
        if _WINDOWS_DEVICE.fullmatch(cleaned):
            cleaned = _truncate("_" + cleaned)
    if cleaned:
        return cleaned
    if fallback is None:
        raise UnsafePathError(f"unusable file name {name!r}")
    return fallback


_SEGMENT_CATEGORIES = _BREAKING_CATEGORIES | _INVISIBLE_CATEGORIES


def safe_segment(key: str) -> str:
    """``key`` itself, when it is usable as one path segment naming one thing everywhere.

    The one rule set of the keys Fusion's storage names directories by (an
    analyzer's name, a SHA-256 hex digest, a GUID). Unlike :func:`safe_filename`,
    which makes a name out of an untrusted claim, this never changes a key: a
    key either passes as it is or is refused with :class:`UnsafePathError`, so
    two different keys never end up naming one directory. Refused:

    - anything but a non-empty string; ``.``, ``..`` and every name starting
      with a dot (hidden names are the temporaries and half-removed trees that
      storage creates and purges);
    - ``/`` and ``\\`` (separators), NUL and every control character (C0, DEL,
      C1), line and paragraph separators, format characters (bidi controls,
      zero-width marks), lone surrogates;
    - ``< > : " | ? * ;``, leading or trailing white space, a trailing dot and
      Windows device names (``CON``, ``nul.txt``): what a Windows or SMB share
      would refuse or silently change (``;`` as in :func:`safe_filename`);
    - upper-case letters, and names not in Unicode NFC: on a case-insensitive
      filesystem (macOS by default, SMB and NTFS mounts) ``Foo`` and ``foo``
      would be one directory, and macOS changes the normal form of names;
      lower-case keys name one directory on every filesystem (hex digests
      from :mod:`hashlib` and ``str(uuid)`` already are; lower a name with
      ``key.lower()``);
    - more than 255 UTF-8 bytes (the limit of one name on common filesystems).
    """
    if not isinstance(key, str):
        raise UnsafePathError(f"a key must be a string, not {type(key).__name__}")
    if not key:
        raise UnsafePathError("empty key")
    shown = repr(key) if len(key) <= 80 else repr(key[:80]) + "..."
    for char in key:
        if char in "/\\":
            raise UnsafePathError(f"key {shown} contains a path separator")
        if unicodedata.category(char) in _SEGMENT_CATEGORIES:
            raise UnsafePathError(f"key {shown} contains the control character {char!r}")
        if char in _RESERVED:
            raise UnsafePathError(f"key {shown} contains {char!r}")
    if key.startswith("."):
        raise UnsafePathError(f"key {shown} starts with a dot")
    if key != key.strip() or key.endswith("."):
        raise UnsafePathError(f"key {shown} starts or ends with white space or a dot")
    if _WINDOWS_DEVICE.fullmatch(key):
        raise UnsafePathError(f"key {shown} is a Windows device name")
    if key != key.lower():
        raise UnsafePathError(f"key {shown} has upper-case letters (keys are lower case)")
    if not unicodedata.is_normalized("NFC", key):
        raise UnsafePathError(f"key {shown} is not in Unicode NFC")
    if len(key.encode()) > _MAX_NAME_BYTES:
        raise UnsafePathError(f"key {shown} is longer than {_MAX_NAME_BYTES} UTF-8 bytes")
    return key
