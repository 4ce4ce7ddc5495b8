"""Logging for Fusion processes: loggers under ``fusion``, text or JSON lines.

Environment variables (used when :func:`setup_logging` gets no argument):

- ``FUSION_LOG_LEVEL``: ``DEBUG``, ``INFO`` (default), ``WARNING``, ``ERROR``, ``CRITICAL``;
- ``FUSION_LOG_FORMAT``: ``text`` (default) or ``json`` (one JSON object per line);
- ``FUSION_LOG_FILE``: append to this file instead of standard error.

Whatever a record holds (a username, a case name, a header from the network),
a text record is one line: control characters, line and paragraph separators,
bidirectional controls, lone surrogates (undecodable bytes kept by
``surrogateescape``) and the backslash itself are written as backslash escapes
(see :func:`escape_text`); the lines of a traceback that follows are
indented, so that no line of it can pass for a record. A JSON record is never
dropped for a string UTF-8 cannot encode: such strings are written with
backslash escapes of the characters it refuses.

:func:`setup_logging` puts a :class:`FusionLogHandler` on the root logger: a
``QueueHandler`` that formats each record once and queues the line, and a
thread that writes the lines in batches, off the event loop, in order, and
writes what is left when the process stops. Handlers added by hand to any
logger work as usual beside it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import sys
import threading
from logging.handlers import QueueHandler
from pathlib import Path
from typing import Any

import msgspec

from fusion.helper.datetime import timestamp_iso

__all__ = [
    "FusionLogHandler",
    "JsonFormatter",
    "TextFormatter",
    "escape_text",
    "get_logger",
    "setup_logging",
]

ROOT = "fusion"

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def get_logger(name: str) -> logging.Logger:
    """The logger ``fusion.<name>`` (``name`` is kept as is if already under ``fusion``)."""
    if name != ROOT and not name.startswith(ROOT + "."):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


# What a text line never holds raw: C0 and C1 controls (line feed, carriage
# return, escape...), DEL, the Unicode line and paragraph separators, the
# bidirectional controls (they reorder what a reader sees), lone surrogates
# (undecodable bytes under ``surrogateescape``; a UTF-8 stream refuses them), and
# the backslash, so that the escapes can be read back unambiguously.
_UNSAFE = re.compile(
    r"[\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_text(text: str) -> str:
    r"""``text`` with no character that could split, reorder or break a text log line.

    A line feed, carriage return and tab become ``\n``, ``\r`` and ``\t``, the
    backslash ``\\``, other controls ``\xNN``, separators, bidirectional
    controls and lone surrogates ``\uNNNN``: Python's own escapes, so
    ``codecs.decode(escaped.encode("latin-1", "backslashreplace"), "unicode_escape")``
    gives ``text`` back. Text without such characters is returned as is.
    """
    # isprintable() is false for every character above but the backslash: the
    # common line costs one C scan, not a regular expression's.
    if text.isprintable() and "\\" not in text:
        return text
    return _UNSAFE.sub(_escape_char, text)


def _utf8_safe(value: Any) -> Any:
    """``value`` (builtins) with every string made encodable to UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8_safe(key): _utf8_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_utf8_safe(item) for item in value]
    return value


def _unencodable(obj: Any) -> Any:
    return str(obj)


_ENCODER = msgspec.json.Encoder(enc_hook=_unencodable)


# Characters JSON may leave raw in a string that str.splitlines() and many
# log viewers take for line breaks: written as JSON escapes instead.
_JSON_BREAKS = (("\u0085", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _encode_json(entry: dict[str, Any]) -> str:
    try:
        encoded = _ENCODER.encode(entry)
    except UnicodeEncodeError:
        # A lone surrogate somewhere (a header's undecodable byte): escape it
        # rather than lose the record. Rare, so only then is the entry walked.
        encoded = _ENCODER.encode(_utf8_safe(msgspec.to_builtins(entry, enc_hook=_unencodable)))
    line = encoded.decode()
    if not encoded.isascii():
        for char, escape in _JSON_BREAKS:
            line = line.replace(char, escape)
    return line


def _iso_utc(created: float) -> str:
    return timestamp_iso(created, milliseconds=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO UTC), ``level``, ``logger``, ``message``,
    every ``extra=`` field, and ``exception`` (formatted) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # list(): one C call, while another thread's formatter may add attributes.
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _encode_json(entry)


def _indented(text: str) -> str:
    # The lines of a traceback, each escaped and indented: a record's own line
    # starts with its time, so none of these can pass for one.
    return "\n".join("    " + escape_text(line) for line in text.split("\n"))


class TextFormatter(logging.Formatter):
    """``2026-11-28T04:00:00.123Z INFO fusion.server: message`` (UTC), one line per
    record (see :func:`escape_text`); a traceback follows on indented lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_utc(record.created)[:-6] + "Z"

    def format(self, record: logging.LogRecord) -> str:
        # Not logging.Formatter.format: it would cache the traceback unescaped in
        # record.exc_text, and append whatever another formatter cached there.
        line = escape_text(
            f"{_iso_utc(record.created)[:-6]}Z {record.levelname} {record.name}: "
            f"{record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + _indented(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + _indented(self.formatStack(record.stack_info))
        return line


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _level(value: int | str | None) -> int:
    if value is None:
        value = os.environ.get("FUSION_LOG_LEVEL") or "INFO"
    if isinstance(value, int):
        return value
    name = value.strip().upper()
    if name not in _LEVELS:
        raise ValueError(f"invalid log level {value!r}: use one of {', '.join(_LEVELS)}")
    level: int = getattr(logging, name)
    return level


def _json(value: bool | None) -> bool:
    if value is not None:
        return value
    fmt = (os.environ.get("FUSION_LOG_FORMAT") or "text").strip().lower()
    if fmt not in ("json", "text"):
        raise ValueError(f"invalid FUSION_LOG_FORMAT {fmt!r}: use json or text")
    return fmt == "json"


class _Flushed(threading.Event):
    """Put in the queue by :meth:`FusionLogHandler.flush`: set once what precedes it is written."""


_STOP = object()


class FusionLogHandler(QueueHandler):
    """The handler :func:`setup_logging` puts on the root logger: it formats each
    record once (its :attr:`formatter`, the text or JSON format), queues the line,
    and a thread of its own writes the lines to :attr:`target`'s stream.

    The thread wakes up when a line arrives, lets :attr:`interval` pass so that
    others join it, and writes every line waiting in one write and one flush.
    Formatting stays with the caller on purpose: a second thread running Python
    code contends for the GIL (and the CPU caches) with the event loop at every
    record, which cost more than the formatting itself; the thread only joins
    and writes, its system calls free of the GIL. Lines keep their order (one
    queue, one reader). :meth:`flush` waits until what was logged before it is
    written (it cuts the interval short); :meth:`close` writes everything left
    and stops the thread (``logging.shutdown``, which the interpreter runs at
    exit, closes every handler: nothing queued is lost on a normal exit).
    """

    interval = 0.05
    """Seconds the first line of a batch waits for others (the most a line waits)."""

    def __init__(self, target: logging.StreamHandler[Any]) -> None:
        super().__init__(queue.SimpleQueue())
        self.target = target
        self.formatter = target.formatter
        self._urgent = threading.Event()
        self._writer = threading.Thread(target=self._write, name="fusion-log-writer", daemon=True)
        self._writer.start()

    def handle(self, record: logging.LogRecord) -> bool:
        """Format ``record`` and queue the line (if this handler's filters pass it).

        Without the lock of :meth:`logging.Handler.handle`: the queue is
        thread-safe, and the I/O that lock guards is the writer thread's.
        """
        if self.filters:
            passed: object = self.filter(record)
            if not passed:
                return False
            if isinstance(passed, logging.LogRecord):  # a filter may replace it (3.12+)
                record = passed
        try:
            self.queue.put_nowait(self.format(record))
        except Exception:  # logging never raises into the caller: reported on stderr
            self.handleError(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Format and queue ``record`` (what :meth:`handle` does, for direct callers)."""
        self.handle(record)

    def flush(self) -> None:
        """Wait until every record logged before this call is written (at most 30 s)."""
        if self._writer.is_alive():
            flushed = _Flushed()
            self.queue.put_nowait(flushed)
            self._urgent.set()
            flushed.wait(30)

    def close(self) -> None:
        """Write what is queued, stop the thread and close :attr:`target`."""
        if self._writer.is_alive():
            self.queue.put_nowait(_STOP)
            self._urgent.set()
            self._writer.join(30)
        self.target.close()
        super().close()

    def _write(self) -> None:
        pending: Any = self.queue
        urgent = self._urgent
        while True:
            batch = [pending.get()]
            urgent.wait(self.interval)
            # Cleared before the queue is drained: a flush() that set it has put
            # its marker already, and is answered in this batch.
            urgent.clear()
            while True:
                try:
                    batch.append(pending.get_nowait())
                except queue.Empty:
                    break
            lines: list[str] = []
            for item in batch:
                if type(item) is str:
                    lines.append(item)
                    continue
                self._write_lines(lines)
                lines = []
                if item is _STOP:
                    return
                item.set()
            self._write_lines(lines)

    def _write_lines(self, lines: list[str]) -> None:
        if not lines:
            return
        target = self.target
        terminator = target.terminator
        with target.lock or contextlib.nullcontext():
            try:
                target.stream.write(terminator.join(lines) + terminator)
                target.stream.flush()
            except Exception:
                target.handleError(logging.makeLogRecord({"msg": lines[0]}))


def setup_logging(
    level: int | str | None = None,
    json: bool | None = None,
    filepath: Path | str | None = None,
) -> FusionLogHandler:
    """Configure the root logger once per process; calling again replaces the setup.

    Arguments left to None come from ``FUSION_LOG_LEVEL``, ``FUSION_LOG_FORMAT``
    and ``FUSION_LOG_FILE``. The root logger gets a :class:`FusionLogHandler`
    (returned), whose thread writes to the file or to standard error; handlers
    added to any logger by hand work as usual beside it. Close the handler (or
    let ``logging.shutdown`` do it at exit) to write what is queued.

    Records stop collecting the thread and process names and ids
    (``logging.logThreads``, ``logProcesses`` and ``logMultiprocessing`` set
    false): neither format writes them, and they are most of what making a
    record costs on each request. A handler of your own that shows
    ``%(process)d`` or ``%(threadName)s`` sets them back to true.
    """
    resolved_level = _level(level)
    use_json = _json(json)
    if filepath is None:
        filepath = os.environ.get("FUSION_LOG_FILE") or None
    target: logging.StreamHandler[Any]
    if filepath is not None:
        target = logging.FileHandler(filepath, encoding="utf-8")
    else:
        target = logging.StreamHandler(sys.stderr)
    target.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler = FusionLogHandler(target)
    handler.set_name("fusion")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "fusion":
            root.removeHandler(existing)
            existing.close()
    root.addHandler(handler)
    root.setLevel(resolved_level)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    return handler
