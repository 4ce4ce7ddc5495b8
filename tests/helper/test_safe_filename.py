"""fusion.helper.filesystem.safe_filename: the one rule set for names Fusion did not choose."""

from __future__ import annotations

import pytest

from fusion.helper.filesystem import UnsafePathError, safe_filename
from fusion.helper.http_response import content_disposition


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("résumé.pdf", "résumé.pdf"),
        # path separators, both kinds: only the last component
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\report.pdf", "report.pdf"),
        # NUL, controls (C0, DEL, C1), line and paragraph separators
        ("a\x00b\nc\x7f", "a_b_c_"),
        ("a\x85b\u2028c\u2029d", "a_b_c_d"),
        # characters invalid on common systems or special in headers
        ('con:"tricky"?*.txt', "con__tricky___.txt"),
        ("a<b>c|d;e", "a_b_c_d_e"),
        # bidi and other format characters removed: no spoofed extension
        ("report\u202egnp.exe", "reportgnp.exe"),
        ("in\u2066vis\u200bible\ufeff", "invisible"),
        ("lone\ud800surrogate", "lonesurrogate"),
        # dot names: no hidden file, no "." or ".."
        (".hidden", "hidden"),
        ("...x...", "x"),
        ("  spaced  ", "spaced"),
        # Windows device names
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("com1", "_com1"),
        ("console", "console"),
        # NFC
        ("e\u0301", "\u00e9"),
        # length: 255 UTF-8 bytes, the extension kept
        ("x" * 300 + ".txt", "x" * 251 + ".txt"),
        ("é" * 200, "é" * 127),
        ("x" * 300 + "." + "y" * 20, ("x" * 300 + "." + "y" * 20)[:255]),
    ],
)
def test_rules(name: str, expected: str) -> None:
    assert safe_filename(name) == expected
    assert len(expected.encode()) <= 255


@pytest.mark.parametrize("name", [None, "", " ", ".", "..", "dir/", "a/..", "\u202e\u200b", ". ."])
def test_nothing_usable_left(name: str | None) -> None:
    assert safe_filename(name, fallback="fallback") == "fallback"
    with pytest.raises(UnsafePathError, match="unusable file name"):
        safe_filename(name)


def test_idempotent_and_never_a_path() -> None:
    for name in ("../a\\b/.c", "x" * 400, "CON", "a\u202eb", "日本.txt"):
        once = safe_filename(name, fallback="f")
        assert safe_filename(once, fallback="f") == once
        assert "/" not in once
        assert "\\" not in once
        assert not once.startswith(".")


def test_content_disposition_uses_the_same_rules() -> None:
    for name in ("report\u202egnp.exe", "CON", "a:b?.txt", "../../x"):
        assert content_disposition(name) == f'attachment; filename="{safe_filename(name)}"'
