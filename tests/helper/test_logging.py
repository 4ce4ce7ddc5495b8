"""fusion.helper.logging: text and JSON lines written to a real file."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fusion.helper.logging import (
    FusionLogHandler,
    JsonFormatter,
    TextFormatter,
    get_logger,
    setup_logging,
)

pytestmark = pytest.mark.usefixtures("restore_root_logger")


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


# -- the queue: records written by a thread of their own, in order, none lost ------


def test_records_are_written_by_the_writer_thread_in_order(tmp_path: Path) -> None:
    logfile = tmp_path / "order.log"
    handler = setup_logging(level="INFO", json=False, filepath=logfile)
    assert isinstance(handler, FusionLogHandler)
    assert isinstance(handler.target, logging.FileHandler)
    writers: set[str] = set()
    writes = 0

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            nonlocal writes
            writers.add(threading.current_thread().name)
            writes += 1
            return super().write(text)

    stream = Recording()
    target: logging.StreamHandler[Any] = handler.target
    target.setStream(stream)
    logger = get_logger("test.order")

    def burst(name: str) -> None:
        for index in range(2000):
            logger.info("%s %d", name, index)

    threads = [threading.Thread(target=burst, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    burst("main")
    for thread in threads:
        thread.join()
    handler.flush()
    messages = [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]
    assert len(messages) == 6000
    for name in ("a", "b", "main"):
        # Each thread's records in the order it logged them.
        assert [m for m in messages if m.startswith(name + " ")] == [
            f"{name} {index}" for index in range(2000)
        ]
    assert writers == {"fusion-log-writer"}  # never the caller's thread
    assert writes < 6000  # lines written in batches, not one write each


def test_close_writes_everything_queued(tmp_path: Path) -> None:
    logfile = tmp_path / "close.log"
    handler = setup_logging(level="INFO", json=True, filepath=logfile)
    logger = get_logger("test.close")
    for index in range(5000):
        logger.info("record %d", index)
    logging.getLogger().removeHandler(handler)
    handler.close()  # what logging.shutdown() does at exit
    assert [json.loads(line)["message"] for line in _lines(logfile)] == [
        f"record {index}" for index in range(5000)
    ]


def test_arguments_are_formatted_when_logged(tmp_path: Path) -> None:
    """A mutable argument changed after the call: the line shows it as it was."""
    logfile = tmp_path / "args.log"
    handler = setup_logging(level="INFO", json=False, filepath=logfile)
    logger = get_logger("test.args")
    for _ in range(200):
        values = [1]
        logger.info("values %s", values)
        values.append(2)
    handler.flush()
    assert {line.split(": ", 1)[1] for line in _lines(logfile)} == {"values [1]"}


def test_handlers_of_ones_own_work_as_usual(tmp_path: Path) -> None:
    """Beside the queue: the record a user's handler gets is the record as logged."""
    logfile = tmp_path / "fusion.log"
    handler = setup_logging(level="INFO", json=False, filepath=logfile)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    own_file = logging.FileHandler(tmp_path / "own.log", encoding="utf-8")
    own_file.setFormatter(logging.Formatter("%(levelname)s %(name)s %(lineno)d %(message)s"))
    keep = Keep()
    root = logging.getLogger()
    root.addHandler(keep)
    logger = get_logger("test.own")
    logger.addHandler(own_file)
    try:
        logger.warning("case %s by %s", "c1", "alice")
        line = sys._getframe().f_lineno - 1
    finally:
        logger.removeHandler(own_file)
        root.removeHandler(keep)
        own_file.close()
    handler.flush()
    (record,) = seen
    assert (record.msg, record.args) == ("case %s by %s", ("c1", "alice"))
    assert record.lineno == line  # the caller's line, as logging finds it
    assert _lines(tmp_path / "own.log") == [f"WARNING fusion.test.own {line} case c1 by alice"]
    (written,) = _lines(logfile)
    assert written.endswith(" WARNING fusion.test.own: case c1 by alice")


def test_a_bad_record_is_reported_and_the_next_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record that cannot be formatted: reported on stderr, the next one written."""
    logfile = tmp_path / "bad.log"
    handler = setup_logging(level="INFO", json=False, filepath=logfile)
    # Not propagating: pytest's own handlers raise on a record they cannot format.
    logger = get_logger("test.bad")
    logger.propagate = False
    logger.addHandler(handler)

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    try:
        logger.info(Unprintable())
        logger.info("after")
        handler.flush()
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert [line.split(": ", 1)[1] for line in _lines(logfile)] == ["after"]
    assert "--- Logging error ---" in capsys.readouterr().err


def test_lines_are_written_without_a_flush(tmp_path: Path) -> None:
    """Batches wait at most ``interval`` for company: the file gets the line by itself."""
    logfile = tmp_path / "later.log"
    handler = setup_logging(level="INFO", json=False, filepath=logfile)
    get_logger("test.later").info("on its own")
    deadline = time.monotonic() + 30  # generous: the machine may be busy
    while not logfile.read_text(encoding="utf-8") and time.monotonic() < deadline:
        time.sleep(handler.interval)
    assert _lines(logfile)[0].endswith(" INFO fusion.test.later: on its own")


def test_filters_of_the_handler_apply(tmp_path: Path) -> None:
    logfile = tmp_path / "filtered.log"
    handler = setup_logging(level="INFO", json=False, filepath=logfile)
    handler.addFilter(lambda record: "secret" not in record.getMessage())
    logger = get_logger("test.filtered")
    logger.info("a secret")
    logger.info("public")
    handler.flush()
    assert [line.split(": ", 1)[1] for line in _lines(logfile)] == ["public"]


def test_records_skip_thread_and_process_names_unless_asked_back(tmp_path: Path) -> None:
    """setup_logging turns the per-record thread and process look-ups off (the
    formats never write them); a user's handler that wants them turns them on."""
    setup_logging(level="INFO", json=True, filepath=tmp_path / "fusion.log")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = get_logger("test.flags")
    keep = Keep()
    logger.addHandler(keep)
    try:
        logger.info("without")
        logging.logThreads = logging.logProcesses = True
        logger.info("with")
    finally:
        logger.removeHandler(keep)
    without, with_ = seen
    assert (without.thread, without.threadName, without.process) == (None, None, None)
    assert with_.threadName == threading.current_thread().name
    assert with_.process == os.getpid()
