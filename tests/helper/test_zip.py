"""fusion.helper.zip: atomic creation and extraction of hostile archives built on the fly."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

from fusion.helper.zip import UnsafeZipError, create_zip, extract_zip


def _tree(directory: Path) -> dict[str, bytes | None]:
    """Every path under ``directory`` (relative) with file contents; None for directories."""
    if not directory.exists():
        return {}
    return {
        path.relative_to(directory).as_posix(): None if path.is_dir() else path.read_bytes()
        for path in sorted(directory.rglob("*"))
    }


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


# -- create_zip ----------------------------------------------------------------


def test_create_from_pairs_and_extract(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"alpha")
    (tmp_path / "b.bin").write_bytes(bytes(range(256)))
    archive = create_zip(
        tmp_path / "out.zip", [(tmp_path / "a.txt", "a.txt"), (str(tmp_path / "b.bin"), "d/b.bin")]
    )
    assert archive == tmp_path / "out.zip"
    with zipfile.ZipFile(archive) as check:
        assert check.namelist() == ["a.txt", "d/b.bin"]
    target = tmp_path / "extracted"
    files = extract_zip(archive, target)
    assert files == [target / "a.txt", target / "d" / "b.bin"]
    assert _tree(target) == {"a.txt": b"alpha", "d": None, "d/b.bin": bytes(range(256))}


def test_create_from_directory_skips_symlinks(tmp_path: Path) -> None:
    source = tmp_path / "case"
    (source / "sub").mkdir(parents=True)
    (source / "metadata.json").write_text("{}")
    (source / "sub" / "data").write_bytes(b"x" * 1000)
    (tmp_path / "secret").write_text("do not ship")
    (source / "link").symlink_to(tmp_path / "secret")
    create_zip(tmp_path / "case.zip", source)
    with zipfile.ZipFile(tmp_path / "case.zip") as check:
        assert check.namelist() == ["metadata.json", "sub/data"]
    with pytest.raises(NotADirectoryError):
        create_zip(tmp_path / "x.zip", tmp_path / "missing")


def test_create_is_atomic(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"ok")
    target = create_zip(tmp_path / "out.zip", [(tmp_path / "ok", "ok")])
    before = target.read_bytes()
    with pytest.raises(FileNotFoundError):
        create_zip(target, [(tmp_path / "ok", "ok"), (tmp_path / "missing", "missing")])
    assert target.read_bytes() == before
    with pytest.raises(UnsafeZipError, match=r"'\.\.' in path"):
        create_zip(target, [(tmp_path / "ok", "../ok")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok", "out.zip"]


# -- hostile archives ------------------------------------------------------------


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _fifo_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("fifo")
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    return info


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([("ok.txt", b"fine"), ("../evil.txt", b"slip")], "'..' in path"),
        ([("a/../../evil.txt", b"slip")], "'..' in path"),
        ([("/tmp/evil.txt", b"abs")], "absolute path"),
        ([("C:/Windows/evil.txt", b"drive")], "drive letter"),
        ([("a\\..\\..\\evil.txt", b"bs")], "backslash"),
        ([("ok.txt", b"fine"), (_symlink_entry(), b"/etc/passwd")], "symbolic link"),
        ([(_fifo_entry(), b"")], "special file"),
    ],
)
def test_refuses_unsafe_entries(
    tmp_path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], reason: str
) -> None:
    archive = _zip(tmp_path / "hostile.zip", entries)
    target = tmp_path / "out"
    before = _tree(tmp_path)
    with pytest.raises(UnsafeZipError, match=reason):
        extract_zip(archive, target)
    assert _tree(tmp_path) == before  # nothing anywhere, not even the target directory


def test_refuses_bomb_by_ratio(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", [("zeros", b"\0" * (8 * 1024 * 1024))])
    assert archive.stat().st_size < 100_000
    with pytest.raises(UnsafeZipError, match="compression ratio above 100"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # The same archive passes with a ratio limit that allows it.
    files = extract_zip(archive, tmp_path / "out", max_ratio=5000)
    assert files[0].stat().st_size == 8 * 1024 * 1024


def test_small_compressible_files_are_fine(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "text.zip", [("log.txt", b"A" * 100_000)])
    assert (extract_zip(archive, tmp_path / "out")[0]).read_bytes() == b"A" * 100_000


def test_refuses_too_many_entries(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(51)])
    with pytest.raises(UnsafeZipError, match="too many entries: 51 > 50"):
        extract_zip(archive, tmp_path / "out", max_entries=50)
    assert len(extract_zip(archive, tmp_path / "out", max_entries=51)) == 51


def test_refuses_total_size(tmp_path: Path) -> None:
    data = bytes(range(256)) * 400  # 102400 bytes, barely compressible
    archive = _zip(tmp_path / "big.zip", [("a", data), ("b", data)])
    with pytest.raises(UnsafeZipError, match="declared uncompressed size exceeds 150000"):
        extract_zip(archive, tmp_path / "out", max_total_size=150_000)
    assert not (tmp_path / "out").exists()


def test_refuses_header_lying_about_size(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "liar.zip", [("ok", b"fine"), ("payload", b"\0" * 2_000_000)])
    # Patch the last entry only: its central record is the last one.
    data = bytearray(archive.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 100)
    local = data.rfind(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, 100)
    archive.write_bytes(bytes(data))
    target = tmp_path / "existing"
    target.mkdir()
    (target / "keep.txt").write_bytes(b"untouched")
    with pytest.raises(UnsafeZipError, match="'payload': corrupt"):
        extract_zip(archive, target, max_total_size=1_000)
    # The entry extracted before the lie was found is gone too; earlier content stays.
    assert _tree(target) == {"keep.txt": b"untouched"}


def test_refuses_garbage(tmp_path: Path) -> None:
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(b"this is not a zip file at all")
    with pytest.raises(UnsafeZipError, match="not a readable zip archive"):
        extract_zip(not_zip, tmp_path / "out")
    good = _zip(tmp_path / "good.zip", [("a", b"x" * 10_000)])
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(UnsafeZipError):
        extract_zip(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError):
        extract_zip(tmp_path / "missing.zip", tmp_path / "out")


def test_merges_into_existing_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "d").mkdir(parents=True)
    (target / "d" / "old").write_bytes(b"old")
    (target / "same").write_bytes(b"before")
    archive = _zip(tmp_path / "a.zip", [("d/new", b"new"), ("same", b"after"), ("dir/", b"")])
    files = extract_zip(archive, target)
    assert files == [target / "d" / "new", target / "same"]
    assert _tree(target) == {
        "d": None,
        "d/new": b"new",
        "d/old": b"old",
        "dir": None,
        "same": b"after",
    }
