"""Logging for Fusion processes: loggers under ``fusion``, text or JSON lines.

Environment variables (used when :func:`setup_logging` gets no argument):

- ``FUSION_LOG_LEVEL``: ``DEBUG``, ``INFO`` (default), ``WARNING``, ``ERROR``, ``CRITICAL``;
- ``FUSION_LOG_FORMAT``: ``text`` (default) or ``json`` (one JSON object per line);
- ``FUSION_LOG_FILE``: append to this file instead of standard error.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["FusionFormatter", "JsonFormatter", "TextFormatter", "get_logger", "setup_logging"]

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


def _unencodable(obj: Any) -> Any:
    return str(obj)


_ENCODER = msgspec.json.Encoder(enc_hook=_unencodable)


# (milliseconds since the epoch, ISO text, with "Z"): lines written in a burst share it.
_last_iso: tuple[int, str, str] = (-1, "", "")


def _iso_times(created: float) -> tuple[int, str, str]:
    global _last_iso  # a one-entry cache
    millis = round(created * 1_000_000) // 1000
    last = _last_iso
    if last[0] != millis:
        text = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        last = _last_iso = (millis, text, text.replace("+00:00", "Z"))
    return last


def _iso_utc(created: float) -> str:
    return _iso_times(created)[1]


def _iso_utc_z(created: float) -> str:
    return _iso_times(created)[2]


class FusionFormatter(logging.Formatter):
    """Base of the two formats: :meth:`format_fields` renders one line from plain
    values, so that writers of many lines (the audit trail) skip the LogRecords and
    still produce exactly what :meth:`format` would."""

    # Whether format_fields() writes the ``extra`` fields (callers may skip building them).
    uses_extra = True

    def format_fields(
        self, created: float, levelname: str, name: str, message: str, extra: dict[str, Any]
    ) -> str:
        """The line of a record with these fields (no exception, no stack)."""
        raise NotImplementedError


class JsonFormatter(FusionFormatter):
    """One JSON object per line: ``time`` (ISO UTC), ``level``, ``logger``, ``message``,
    every ``extra=`` field, and ``exception`` (formatted) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(entry).decode()

    def format_fields(
        self, created: float, levelname: str, name: str, message: str, extra: dict[str, Any]
    ) -> str:
        entry: dict[str, Any] = {
            "time": _iso_utc(created),
            "level": levelname,
            "logger": name,
            "message": message,
        }
        for key, value in extra.items():
            if key not in entry:
                entry[key] = value
        return _ENCODER.encode(entry).decode()


class TextFormatter(FusionFormatter):
    """``2026-11-28T04:00:00.123Z INFO fusion.server: message`` (UTC)."""

    uses_extra = False

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_utc_z(record.created)

    def format_fields(
        self, created: float, levelname: str, name: str, message: str, extra: dict[str, Any]
    ) -> str:
        return f"{_iso_utc_z(created)} {levelname} {name}: {message}"


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


def setup_logging(
    level: int | str | None = None,
    json: bool | None = None,
    filepath: Path | str | None = None,
) -> logging.Handler:
    """Configure the root logger once per process; calling again replaces the setup.

    Arguments left to None come from ``FUSION_LOG_LEVEL``, ``FUSION_LOG_FORMAT``
    and ``FUSION_LOG_FILE``. Returns the installed handler.
    """
    resolved_level = _level(level)
    use_json = _json(json)
    if filepath is None:
        filepath = os.environ.get("FUSION_LOG_FILE") or None
    handler: logging.Handler
    if filepath is not None:
        handler = logging.FileHandler(filepath, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.set_name("fusion")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "fusion":
            root.removeHandler(existing)
            existing.close()
    root.addHandler(handler)
    root.setLevel(resolved_level)
    return handler
