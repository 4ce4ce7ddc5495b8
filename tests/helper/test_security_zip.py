"""extract_zip on conflicting archives and hostile targets: UnsafeZipError, never a raw
OSError, and nothing partial left behind. Real zip files, directories and symlinks."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusion.helper.zip import UnsafeZipError, extract_zip


def _zip(path: Path, *entries: tuple[str, bytes | None]) -> Path:
    """An archive of ``(name, data)`` entries in that order; ``None`` data: a directory."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            if data is None:
                archive.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            else:
                archive.writestr(name, data)
    return path


def _snapshot(root: Path) -> dict[str, str | bytes]:
    """Every path under ``root`` (links not followed): file bytes, ``dir``, or ``-> target``."""
    found: dict[str, str | bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = path.read_bytes()
    return found


@pytest.mark.parametrize(
    "entries",
    [
        (("a", b"file"), ("a/b", b"under the file")),
        (("a/b", b"under the file"), ("a", b"file")),
        (("a", b"file"), ("a", None)),
        (("a", None), ("a", b"file")),
        (("x/a", b"file"), ("x/a/b/c", b"deeper")),
    ],
    ids=["file-then-child", "child-then-file", "file-then-dir", "dir-then-file", "nested"],
)
def test_a_path_both_file_and_directory_is_refused(
    tmp_path: Path, entries: tuple[tuple[str, bytes | None], ...]
) -> None:
    archive = _zip(tmp_path / "conflict.zip", *entries)
    target = tmp_path / "out"
    with pytest.raises(UnsafeZipError, match="is a file, and a directory"):
        extract_zip(archive, target)
    assert not target.exists()  # created for nothing, removed again
    # Into an existing target: left exactly as it was.
    target.mkdir()
    (target / "keep").write_bytes(b"kept")
    with pytest.raises(UnsafeZipError):
        extract_zip(archive, target)
    assert _snapshot(target) == {"keep": b"kept"}


def test_a_symlinked_directory_in_the_target_is_refused_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").symlink_to(outside, target_is_directory=True)
    (target / "0first").write_bytes(b"old first")
    # "0first" sorts before "a": moved first by the old code, before the failure.
    archive = _zip(tmp_path / "link.zip", ("0first", b"new first"), ("a/b", b"through the link"))
    before = _snapshot(target)
    with pytest.raises(UnsafeZipError, match="it is a file or a link"):
        extract_zip(archive, target)
    assert _snapshot(target) == before
    assert _snapshot(outside) == {"secret": b"secret"}


def test_a_directory_where_the_target_has_a_file_leaves_nothing_partial(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "sub").mkdir(parents=True)
    (target / "replaced").write_bytes(b"old")
    (target / "sub" / "kept").write_bytes(b"kept")
    (target / "zfile").write_bytes(b"a file, not a directory")
    archive = _zip(
        tmp_path / "partial.zip",
        ("new", b"new"),
        ("replaced", b"new content"),
        ("sub/added", b"added"),
        ("zfile/inner", b"cannot go there"),
    )
    before = _snapshot(target)
    with pytest.raises(UnsafeZipError, match="zfile with a directory"):
        extract_zip(archive, target)
    assert _snapshot(target) == before


def test_a_file_where_the_target_has_a_directory_leaves_nothing_partial(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "zdir").mkdir(parents=True)
    archive = _zip(tmp_path / "partial.zip", ("new", b"new"), ("zdir", b"a file"))
    with pytest.raises(UnsafeZipError, match="cannot replace directory"):
        extract_zip(archive, target)
    assert _snapshot(target) == {"zdir": "dir"}


def test_a_file_replaces_a_symlink_itself(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside")
    target = tmp_path / "out"
    target.mkdir()
    (target / "link").symlink_to(outside)
    archive = _zip(tmp_path / "ok.zip", ("link", b"from the archive"), ("d/e", b"e"))
    assert extract_zip(archive, target) == [target / "link", target / "d" / "e"]
    assert _snapshot(target) == {"link": b"from the archive", "d": "dir", "d/e": b"e"}
    assert outside.read_bytes() == b"outside"


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody (root included) can add to: ``chattr +i``, undone after."""
    path = tmp_path / "out" / "locked"
    path.mkdir(parents=True)
    (path / "inside").write_bytes(b"inside")
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr not found: apt-get install -y e2fsprogs")
    done = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem has no immutable flag: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_an_io_error_while_merging_undoes_every_rename(tmp_path: Path, immutable_dir: Path) -> None:
    target = immutable_dir.parent
    (target / "b-replaced").write_bytes(b"old")
    (target / "sub").mkdir()
    archive = _zip(
        tmp_path / "io.zip",
        ("a-new", b"new"),  # renamed first
        ("b-replaced", b"new content"),  # moved aside, then replaced
        ("locked/added", b"refused by the filesystem"),  # EPERM here
        ("sub/added", b"never reached"),
    )
    before = _snapshot(target)
    with pytest.raises(PermissionError):
        extract_zip(archive, target)
    assert _snapshot(target) == before
