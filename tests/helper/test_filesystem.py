"""fusion.helper.filesystem on real files."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from fusion.helper.filesystem import (
    UnsafePathError,
    atomic_write,
    atomic_write_async,
    directory_size,
    filesystem_usage,
    iter_guid_items,
    safe_join,
)


def test_iter_guid_items(tmp_path: Path) -> None:
    guids = sorted(str(uuid.uuid4()) for _ in range(3))
    (tmp_path / guids[0]).mkdir()
    (tmp_path / guids[1]).write_text("file")
    (tmp_path / guids[2].upper()).mkdir()
    for junk in ("notes.txt", f".{guids[0]}.tmp", f"{guids[0]}.json", "1234", guids[0][:-1]):
        (tmp_path / junk).write_text("x")
    found = list(iter_guid_items(tmp_path))
    assert sorted(str(guid) for guid, _ in found) == guids
    for guid, path in found:
        assert path.parent == tmp_path
        assert path.name.lower() == str(guid)
    assert list(iter_guid_items(tmp_path / "missing")) == []


def test_filesystem_usage(tmp_path: Path) -> None:
    usage = filesystem_usage(tmp_path)
    stat = os.statvfs(tmp_path)
    assert usage.total == stat.f_blocks * stat.f_frsize
    assert 0 < usage.free <= usage.total
    assert usage.used <= usage.total


def test_directory_size(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "b").write_bytes(b"y" * 20)
    (tmp_path / "sub" / "deeper" / "c").write_bytes(b"z" * 3)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"b" * 10_000)
    (tmp_path / "link-dir").symlink_to(outside)
    (tmp_path / "link-file").symlink_to(outside / "big")
    assert directory_size(tmp_path) == 123
    assert directory_size(tmp_path / "missing") == 0


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_atomic_write(tmp_path: Path) -> None:
    target = tmp_path / "metadata.json"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    assert _names(tmp_path) == ["metadata.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "data"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["data"]
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing-dir" / "x", b"data")


async def test_atomic_write_async(tmp_path: Path) -> None:
    target = tmp_path / "async.bin"
    await atomic_write_async(target, b"\x00" * 1000)
    assert target.read_bytes() == b"\x00" * 1000


def test_safe_join(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "cases" / "a").mkdir(parents=True)
    assert safe_join(root, "cases", "a", "file.txt") == (root / "cases/a/file.txt").resolve()
    assert safe_join(root, "cases/a") == (root / "cases" / "a").resolve()
    assert safe_join(root) == root.resolve()
    (root / "inside").symlink_to(root / "cases")
    assert safe_join(root, "inside", "a") == (root / "cases" / "a").resolve()


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        (("..",), "contains '..'"),
        (("cases", "../../etc"), "contains '..'"),
        (("/etc/passwd",), "is absolute"),
        (("cases", "/tmp"), "is absolute"),
        (("bad\0name",), "NUL byte"),
        (("escape", "passwd"), "leaves"),
        (("escape-file",), "leaves"),
    ],
)
def test_safe_join_refuses_escapes(tmp_path: Path, parts: tuple[str, ...], reason: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "passwd").write_text("x")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "escape-file").symlink_to(tmp_path / "secret" / "passwd")
    with pytest.raises(UnsafePathError, match=reason):
        safe_join(root, *parts)
    assert issubclass(UnsafePathError, ValueError)
