"""fusion.helper.logging: text and JSON lines written to a real file."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fusion.helper.logging import JsonFormatter, TextFormatter, get_logger, setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("FUSION_LOG_LEVEL", "FUSION_LOG_FORMAT", "FUSION_LOG_FILE"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_get_logger() -> None:
    assert get_logger("server.auth").name == "fusion.server.auth"
    assert get_logger("fusion.helper").name == "fusion.helper"
    assert get_logger("fusion").name == "fusion"
    assert get_logger("fusionist").name == "fusion.fusionist"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_json_lines(tmp_path: Path) -> None:
    logfile = tmp_path / "fusion.log"
    handler = setup_logging(level="debug", json=True, filepath=logfile)
    assert isinstance(handler.formatter, JsonFormatter)
    logger = get_logger("test.json")
    logger.debug("hello %s", "world", extra={"case_guid": "abc", "count": 3, "obj": object()})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    handler.flush()
    first, second = (json.loads(line) for line in _lines(logfile))
    assert first["level"] == "DEBUG"
    assert first["logger"] == "fusion.test.json"
    assert first["message"] == "hello world"
    assert first["case_guid"] == "abc"
    assert first["count"] == 3
    assert first["obj"].startswith("<object object")
    when = datetime.fromisoformat(first["time"])
    assert when.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - when) < timedelta(seconds=30)
    assert "args" not in first
    assert "msg" not in first
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in second["exception"]


def test_text_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logfile = tmp_path / "text.log"
    monkeypatch.setenv("FUSION_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("FUSION_LOG_FORMAT", "text")
    monkeypatch.setenv("FUSION_LOG_FILE", str(logfile))
    handler = setup_logging()
    assert isinstance(handler.formatter, TextFormatter)
    logger = get_logger("test.text")
    logger.info("filtered out")
    logger.warning("kept")
    handler.flush()
    (line,) = _lines(logfile)
    stamp, rest = line.split(" ", 1)
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0)
    assert rest == "WARNING fusion.test.text: kept"


def test_json_from_environment_and_replacement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUSION_LOG_FORMAT", "JSON")
    first = setup_logging(filepath=tmp_path / "a.log")
    assert isinstance(first.formatter, JsonFormatter)
    assert logging.getLogger().level == logging.INFO
    second = setup_logging(filepath=tmp_path / "b.log")
    root_handlers = logging.getLogger().handlers
    assert second in root_handlers
    assert first not in root_handlers  # calling again replaces, never duplicates lines


def test_invalid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="invalid log level 'loud'"):
        setup_logging(level="loud")
    monkeypatch.setenv("FUSION_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="invalid FUSION_LOG_FORMAT 'xml': use json or text"):
        setup_logging()
