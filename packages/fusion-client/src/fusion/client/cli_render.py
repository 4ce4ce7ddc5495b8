"""What the ``fusion-client`` command shows: tables, cases, event lines, progress bars."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import IO, Any

from fusion.client.progress import TransferProgress

__all__ = [
    "SHORT_GUID",
    "ProgressBar",
    "case_changes",
    "case_details",
    "case_table",
    "event_line",
    "size_text",
    "table",
    "terminal_width",
]


def terminal_width(out: IO[str]) -> int | None:
    """The terminal's columns when ``out`` is a terminal, else ``None`` (no limit)."""
    if not out.isatty():
        return None
    return shutil.get_terminal_size((100, 24)).columns


def _cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def table(
    rows: Sequence[Sequence[str]],
    headers: Sequence[str],
    *,
    width: int | None = None,
    shrink: Sequence[int] = (),
) -> str:
    """Columns two spaces apart; with ``width``, the ``shrink`` columns are cut to fit it."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(size, len(cell)) for size, cell in zip(widths, row, strict=True)]
    if width is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        for index in shrink:  # the last named first gives way first
            if excess <= 0:
                break
            floor = max(len(headers[index]), 6)
            give = min(excess, max(widths[index] - floor, 0))
            widths[index] -= give
            excess -= give
    lines = [
        "  ".join(
            _cut(cell, size).ljust(size) for cell, size in zip(line, widths, strict=True)
        ).rstrip()
        for line in (headers, *rows)
    ]
    if width is not None:
        lines = [_cut(line, width) for line in lines]
    return "\n".join(lines)


def _when(value: Any) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(value)


SHORT_GUID = 8
"""Characters of a GUID shown when whole ones do not fit (a prefix the command resolves)."""


def case_table(cases: Sequence[Mapping[str, Any]], *, width: int | None) -> str:
    """``cases list``: one line per case, fitted to ``width``.

    Too narrow for whole GUIDs beside 20 characters of name, the GUIDs are
    shortened to their first characters (like git's short hashes); then the
    name and the ACS are cut.
    """
    headers = ("GUID", "STATE", "CREATED", "ACS", "NAME")
    rows = _case_rows(cases, None)
    if width is not None:
        fixed = sum(max(len(row[i]) for row in rows) for i in range(3)) + 2 * 4
        acs = max(len(row[3]) for row in rows) if rows else 0
        if fixed + min(acs, 12) + 20 > width:
            rows = _case_rows(cases, SHORT_GUID)
    return table(rows, headers, width=width, shrink=(3, 4))


def _case_rows(
    cases: Sequence[Mapping[str, Any]], guid_length: int | None
) -> list[tuple[str, ...]]:
    return [
        (
            str(case.get("guid", ""))[:guid_length],
            "closed" if case.get("closed") else "open",
            _when(case.get("created")),
            ",".join(sorted(case.get("acs") or [])) or "-",
            str(case.get("name", "")),
        )
        for case in cases
    ]


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if value is None:
        return "-"
    return str(value)


def case_details(case: Mapping[str, Any]) -> str:
    """``cases get``: one ``key  value`` line per field, the service's own fields included."""
    size = max(len(key) for key in case)
    return "\n".join(f"{key.ljust(size)}  {_value(value)}" for key, value in case.items())


_QUIET_FIELDS = frozenset({"updated"})  # changes on every update: not news


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, str) else _value(value) if value is not None else "null"
    return _cut(text, limit)


def case_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str:
    """``field old → new`` for each field that changed (``updated`` aside), shortest first.

    Shortest first, so that a line cut at the terminal's edge shows as many as it can.
    """
    if before is None:
        return ""
    changes = [
        f"{key} {_short(before.get(key), 24)} → {_short(value, 24)}"
        for key, value in after.items()
        if key not in _QUIET_FIELDS and before.get(key) != value
    ]
    return ", ".join(sorted(changes, key=len))


def event_line(
    event: Mapping[str, Any],
    case: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    *,
    when: datetime,
    width: int | None,
) -> str:
    """One readable line: time, category, who, case name, what changed (or the event's ext)."""
    ext = event.get("ext") or {}
    who = ext.get("username") or ", ".join(ext.get("usernames") or []) or event.get("source", "")
    if event.get("category") == "subscribers":
        who = f"watching: {who}"
    details = case_changes(previous, case)
    extra = {key: value for key, value in ext.items() if key not in ("username", "usernames")}
    if extra:
        text = " ".join(f"{key}={_short(value, 24)}" for key, value in extra.items())
        details = f"{details}  {text}" if details else text
    line = "  ".join(
        part
        for part in (
            when.strftime("%H:%M:%S"),
            str(event.get("category", "")).ljust(12),
            str(who),
            repr(str(case.get("name", ""))),
            details,
        )
        if part
    )
    return _cut(line, width) if width is not None else line


def size_text(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """A transfer's bar on a terminal: percent, bytes, rate and ETA, redrawn 10 times a second.

    Give it to ``on_progress``; :meth:`done` ends the line with a summary.
    Meant for a terminal only: the command does not make one otherwise.
    """

    def __init__(self, out: IO[str], label: str) -> None:
        self.out = out
        self.label = label
        self.last: TransferProgress | None = None
        self._drawn = 0.0

    def __call__(self, step: TransferProgress) -> None:
        self.last = step
        now = time.monotonic()
        if now - self._drawn < 0.1 and step.done != step.total:
            return
        self._drawn = now
        self._draw(step)

    def _draw(self, step: TransferProgress) -> None:
        columns = shutil.get_terminal_size((80, 24)).columns
        rate = f"{size_text(step.rate)}/s"
        if step.total is not None and step.fraction is not None:
            eta = "--:--" if step.eta is None else _duration(step.eta)
            tail = (
                f" {100 * step.fraction:3.0f}%  {size_text(step.done)} / {size_text(step.total)}"
                f"  {rate}  ETA {eta}"
            )
            room = columns - len(self.label) - len(tail) - 4
            bar = ""
            if room >= 10:
                size = min(room, 40)
                filled = int(size * step.fraction)
                bar = f" [{'#' * filled}{'.' * (size - filled)}]"
            line = f"{self.label}{bar}{tail}"
        else:
            line = f"{self.label}  {size_text(step.done)}  {rate}"
        self.out.write(f"\r{_cut(line, columns - 1)}\x1b[K")
        self.out.flush()

    def abort(self) -> None:
        """End the bar's line where it stands (the transfer failed)."""
        if self._drawn:
            self.out.write("\n")
            self.out.flush()

    def done(self) -> None:
        """Draw the last step (the bar at 100%) and end its line."""
        if self.last is not None:
            self._draw(self.last)  # however soon after the previous draw
            self.out.write("\n")
        self.out.flush()
