"""Hostile text in log records: one text line per record whatever a field holds, no
JSON record lost to undecodable bytes, download tokens redacted. Real files."""

from __future__ import annotations

import codecs
import json
import logging
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusion.helper.logging import escape_text, setup_logging
from fusion.helper.tracing import REDACTED, redact_download_tokens, trace_user_op

FORGED = "2026-01-01T00:00:00.000Z INFO fusion.audit: granted delete_case to carol"
# Everything that splits, reorders or breaks a line, and the backslash.
HOSTILE = (
    f"a\nb\r\n{FORGED}\x00\x1b[2J\x7f\x85\x0b\x0c\x1c\u2028\u2029"
    "\u202e\u2066\u061c\u200f\udcff\ud800\\n\tend"
)
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ [\w.]+: ")


def _unescape(text: str) -> str:
    return codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")


pytestmark = pytest.mark.usefixtures("restore_root_logger")


def _file_lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8")  # strictly: nothing unencodable written raw
    lines = text.split("\n")
    assert lines.pop() == ""
    assert text.splitlines() == lines  # no NEL, U+2028, lone CR... between the \n
    return lines


@given(st.text(st.characters(codec=None, exclude_categories=())))
def test_escape_text_is_one_printable_line_and_reversible(text: str) -> None:
    escaped = escape_text(text)
    assert len(escaped.splitlines()) <= 1
    # Unassigned code points are not printable either, and harmless: left as they are.
    assert all(
        char not in BIDI and unicodedata.category(char) not in ("Cc", "Zl", "Zp", "Cs")
        for char in escaped
    )
    assert _unescape(escaped) == text


def test_escape_text_forms() -> None:
    assert escape_text("plain text, é € 😀") == "plain text, é € 😀"
    assert escape_text("a\nb\rc\td\\e") == "a\\nb\\rc\\td\\\\e"
    assert escape_text("\x00\x1b\x7f\x85") == "\\x00\\x1b\\x7f\\x85"
    assert escape_text("\u2028\u2029\u202e\u2066\udcff") == "\\u2028\\u2029\\u202e\\u2066\\udcff"


def test_text_file_one_line_per_record(tmp_path: Path) -> None:
    logfile = tmp_path / "text.log"
    handler = setup_logging(level="INFO", json=False, filepath=logfile)
    logger = logging.getLogger("fusion.test.hostile")
    case_name = f"case\n{FORGED}"
    logger.info("case %s renamed by %s", case_name, HOSTILE)
    logger.warning("header %s", "caf\udce9")  # an undecodable byte, as aiohttp keeps it
    try:
        raise ValueError(f"bad username {HOSTILE}")
    except ValueError:
        logger.exception("login of %s failed", "eve\ninjected")
    logger.info("after")
    handler.flush()
    lines = _file_lines(logfile)
    records = [line for line in lines if TEXT_LINE.match(line)]
    assert [line.split(": ", 1)[1].split(" ", 1)[0] for line in records] == [
        "case",
        "header",
        "login",
        "after",
    ]
    renamed, header, failed, _ = records
    assert _unescape(renamed.split(": ", 1)[1]) == f"case {case_name} renamed by {HOSTILE}"
    assert header.endswith("header caf\\udce9")
    assert failed.endswith("login of eve\\ninjected failed")
    # The traceback follows its record, every line indented and escaped.
    start = lines.index(failed)
    traceback = lines[start + 1 : lines.index(records[3])]
    assert traceback[0] == "    Traceback (most recent call last):"
    assert all(line.startswith("    ") and line.isprintable() for line in traceback)
    # The message's own line breaks make more lines, indented like the others.
    message = f"ValueError: bad username {HOSTILE}".split("\n")
    assert traceback[-len(message) :] == ["    " + escape_text(line) for line in message]
    assert not any(line.startswith(FORGED) for line in lines)


def test_json_file_keeps_records_with_undecodable_strings(tmp_path: Path) -> None:
    logfile = tmp_path / "json.log"
    handler = setup_logging(level="INFO", json=True, filepath=logfile)
    logger = logging.getLogger("fusion.test.hostile")
    logger.info(
        "agent %s",
        "caf\udce9",
        extra={"request_header": {"User-Agent": "x\udcff\u2028y"}, "tags": ["\udc80", 1]},
    )
    logger.info("case %s", f"name\n{FORGED}\u2028\x85")
    handler.flush()
    raw = logfile.read_bytes()
    assert "\u2028".encode() not in raw
    assert "\x85".encode() not in raw
    first, second = (json.loads(line) for line in _file_lines(logfile))
    assert first["message"] == "agent caf\\udce9"
    assert first["request_header"] == {"User-Agent": "x\\udcff\u2028y"}
    assert first["tags"] == ["\\udc80", 1]
    assert second["message"] == f"case name\n{FORGED}\u2028\x85"  # exact: JSON is safe


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_audit_records_of_hostile_names(tmp_path: Path, log_format: str) -> None:
    logfile = tmp_path / f"{log_format}.log"
    handler = setup_logging(level="INFO", json=log_format == "json", filepath=logfile)
    who = f"eve\n{FORGED}\udcff"
    trace_user_op(who, "retrieve_case", granted=True, client_ip="127.0.0.1")
    trace_user_op(who, "delete_case", granted=False, context={"reason": "no\nway"})
    trace_user_op(who, "update_case", granted=True)
    handler.flush()
    lines = _file_lines(logfile)
    assert len(lines) == 3
    if log_format == "text":
        assert all(TEXT_LINE.match(line) for line in lines)
        escaped = escape_text(who)
        assert lines[0].endswith(
            f"INFO fusion.audit: granted retrieve_case to {escaped} case=- ip=127.0.0.1"
        )
        assert f"WARNING fusion.audit: denied delete_case to {escaped} case=-" in lines[1]
        assert f"granted update_case to {escaped} case=-" in lines[2]
    else:
        records = [json.loads(line) for line in lines]
        assert [record["audit"]["who"] for record in records] == [f"eve\n{FORGED}\\udcff"] * 3
        assert records[1]["audit"]["context"] == {"reason": "no\nway"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /api/download/g-1/tok_EN-1 HTTP/1.1", f"GET /api/download/g-1/{REDACTED} HTTP/1.1"),
        ("GET /api/download/g/tok?x=1 HTTP/1.1", f"GET /api/download/g/{REDACTED}?x=1 HTTP/1.1"),
        ("http://h:1/api/download/g/tok#f", f"http://h:1/api/download/g/{REDACTED}#f"),
        # The router decodes the path: so does the redaction, when that hides a token.
        ("GET /api/%64ownload/g/tok HTTP/1.1", f"GET /api/download/g/{REDACTED} HTTP/1.1"),
        ("GET /api/download/g%2Ftok HTTP/1.1", f"GET /api/download/g/{REDACTED} HTTP/1.1"),
        ("GET /api/download/g/t%6Fk HTTP/1.1", f"GET /api/download/g/{REDACTED} HTTP/1.1"),
        (
            "a /api/download/g/t and /api/download/h/u",
            f"a /api/download/g/{REDACTED} and /api/download/h/{REDACTED}",
        ),
        # Nothing to hide: left as is, percent-encoding included.
        ("GET /api/case/g?q=%20 HTTP/1.1", "GET /api/case/g?q=%20 HTTP/1.1"),
        ("GET /api/download/ HTTP/1.1", "GET /api/download/ HTTP/1.1"),
        ("-", "-"),
    ],
)
def test_redact_download_tokens(text: str, expected: str) -> None:
    assert redact_download_tokens(text) == expected
