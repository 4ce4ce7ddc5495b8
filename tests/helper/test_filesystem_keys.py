"""safe_segment: the one rule set of storage keys; the size and usage helpers' meanings."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

import fusion.helper
from fusion.helper.filesystem import (
    UnsafePathError,
    directory_size,
    filesystem_usage,
    safe_segment,
)

GOOD_KEYS = [
    str(uuid.uuid4()),
    hashlib.sha256(b"sample").hexdigest(),
    "yara",
    "capa-v7.1_rules",
    "é-analyzer",  # NFC
    "a" * 255,
    "名前",  # 6 bytes
    "x.json",
    "a b",
    "é" * 127,  # 254 bytes
]

HOSTILE_KEYS = [
    "",
    ".",
    "..",
    "../x",
    "a/b",
    "a\\b",
    "/etc",
    "x\0y",
    "\0",
    ".hidden",
    ".x.tmp",
    "tab\there",
    "new\nline",
    "del\x7f",
    "c1\x85",
    "bidi\u202egnp.exe",
    "zero\u200bwidth",
    "line\u2028sep",
    "surrogate\ud800",
    "a" * 256,
    "é" * 128,  # 256 bytes
    "urn:uuid:x",
    "what?",
    "star*",
    "pipe|",
    'quote"',
    "<angle>",
    "semi;colon",
    " lead",
    "trail ",
    "trail.",
    "con",
    "nul.txt",
    "com1",
    "Foo",
    "ABCDEF",
    str(uuid.uuid4()).upper(),
    "e\u0301",  # NFD of é
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_good_keys_pass_unchanged(key: str) -> None:
    assert safe_segment(key) is key


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
def test_hostile_keys_are_refused(key: str) -> None:
    with pytest.raises(UnsafePathError) as raised:
        safe_segment(key)
    message = str(raised.value)
    # The message says what is wrong, and a huge key does not flood it.
    assert len(message) < 200
    assert "key" in message


@pytest.mark.parametrize("key", [None, 42, b"bytes", uuid.uuid4()], ids=repr)
def test_non_strings_are_refused(key: object) -> None:
    with pytest.raises(UnsafePathError, match="must be a string"):
        safe_segment(key)  # type: ignore[arg-type]


def test_every_good_key_is_one_directory(tmp_path: Path) -> None:
    for key in GOOD_KEYS:
        (tmp_path / key).mkdir()
    assert sorted(os.listdir(tmp_path)) == sorted(GOOD_KEYS)


def test_directory_size_is_the_older_disk_usage(tmp_path: Path) -> None:
    """The older framework's disk_usage(path): bytes under a directory, or a file's size."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"x" * 7)
    (tmp_path / "g").write_bytes(b"y" * 5)
    assert directory_size(tmp_path) == 12
    assert directory_size(tmp_path / "g") == 5
    assert directory_size(tmp_path / "missing") == 0
    assert directory_size(tmp_path / "g" / "below-a-file") == 0


def test_filesystem_usage_is_not_the_bytes_under_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10)
    usage = filesystem_usage(tmp_path)
    assert usage.total > usage.free > 0
    assert usage.used != directory_size(tmp_path) or usage.total != 10
    assert isinstance(usage, fusion.helper.FilesystemUsage)


def test_no_name_with_the_older_meaning_changed() -> None:
    """A ported service calling disk_usage() fails loudly instead of getting other numbers."""
    assert "disk_usage" not in fusion.helper.__all__
    assert not hasattr(fusion.helper.filesystem, "disk_usage")
    with pytest.raises(AttributeError):
        _ = fusion.helper.disk_usage
