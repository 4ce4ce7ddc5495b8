"""The audit trail: one structured line per access decision, on ``fusion.audit``.

Each decision is logged at INFO (granted) or WARNING (refused) with the message
``"granted case.read to alice case=<guid> ip=<addr>"`` and the record's ``audit``
attribute (from ``extra=``) holding the JSON-compatible :class:`AuditRecord`
fields, which the JSON log format writes as one object.

:class:`FusionAccessLogger` is aiohttp's access log with the token of every
``/api/download/{guid}/{token}`` URL redacted: a pending download key is a
credential, and log files are read by more people than the files it opens.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote
from uuid import UUID

import msgspec
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from fusion.concept import Identity, utcnow
from fusion.helper.logging import FusionFormatter

__all__ = [
    "AUDIT_LOGGER",
    "REDACTED",
    "AuditRecord",
    "AuditTrail",
    "FusionAccessLogger",
    "redact_download_tokens",
    "trace_user_op",
]

AUDIT_LOGGER = logging.getLogger("fusion.audit")


class AuditRecord(msgspec.Struct, kw_only=True):
    """Who tried what, on which case, from where, and whether it was allowed."""

    time: datetime
    who: str
    action: str
    granted: bool
    case_guid: UUID | None = None
    client_ip: str | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible fields (built by hand: this runs on every request)."""
        return _audit_dict(
            self.time,
            self.who,
            self.action,
            self.granted,
            self.case_guid,
            self.client_ip,
            self.context,
        )


def _audit_dict(
    when: datetime,
    who: str,
    action: str,
    granted: bool,
    case_guid: UUID | str | None,
    client_ip: str | None,
    context: dict[str, Any],
) -> dict[str, Any]:
    return {
        "time": when.isoformat(),
        "who": who,
        "action": action,
        "granted": granted,
        "case_guid": None if case_guid is None else _guid_text(case_guid),
        "client_ip": client_ip,
        "context": context,
    }


def trace_user_op(
    identity_or_username: Identity | str,
    action: str,
    *,
    granted: bool,
    case_guid: UUID | str | None = None,
    client_ip: str | None = None,
    context: dict[str, Any] | None = None,
    logger: logging.Logger = AUDIT_LOGGER,
) -> AuditRecord:
    """Record one access decision on ``logger`` (``fusion.audit``) and return it."""
    who = (
        identity_or_username.username
        if isinstance(identity_or_username, Identity)
        else identity_or_username
    )
    if isinstance(case_guid, str):
        case_guid = UUID(case_guid)
    record = AuditRecord(
        time=utcnow(),
        who=who,
        action=action,
        granted=granted,
        case_guid=case_guid,
        client_ip=client_ip,
        context=context or {},
    )
    level = logging.INFO if granted else logging.WARNING
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "%s %s to %s case=%s ip=%s",
            "granted" if granted else "denied",
            action,
            who,
            case_guid or "-",
            client_ip or "-",
            extra={"audit": record.to_dict()},
        )
    return record


_Entry = tuple[float, str, str, "UUID | str | None", "str | None", "dict[str, Any] | None"]


class AuditTrail:
    """Granted decisions of hot paths, written once per event-loop iteration.

    :func:`trace_user_op` makes a LogRecord per decision, and every record is
    formatted and written (one system call) on its own: tens of microseconds on
    a route that answers in fifty. :meth:`granted` only appends the decision to
    a list; the list is written when the loop iteration ends (or at
    ``max_batch`` decisions, or on :meth:`flush`), as the same lines in one
    write when every handler on the way is a Fusion stream handler (see
    :func:`fusion.helper.logging.setup_logging`), or as one LogRecord each —
    with the ``audit`` attribute, at the decision's time — otherwise (filters,
    other handlers, pytest's ``caplog``).

    Refusals are rare and matter most: :meth:`denied` flushes what is pending,
    then logs the refusal at once (WARNING), so the trail stays in order.
    """

    def __init__(self, logger: logging.Logger = AUDIT_LOGGER, *, max_batch: int = 512) -> None:
        self.logger = logger
        self.max_batch = max_batch
        self._pending: list[_Entry] = []
        self._scheduled = False

    def granted(
        self,
        who: str,
        action: str,
        *,
        case_guid: UUID | str | None = None,
        client_ip: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        """Record a granted decision (INFO); written at the end of this loop iteration."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        pending = self._pending
        pending.append((time.time(), who, action, case_guid, client_ip, context))
        if len(pending) >= self.max_batch:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            loop.call_soon(self.flush)
            self._scheduled = True

    def denied(
        self,
        who: str,
        action: str,
        *,
        case_guid: UUID | str | None = None,
        client_ip: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        """Record a refusal (WARNING), written at once after the pending decisions."""
        self.flush()
        trace_user_op(
            who,
            action,
            granted=False,
            case_guid=case_guid,
            client_ip=client_ip,
            context=context,
            logger=self.logger,
        )

    def flush(self) -> None:
        """Write the pending decisions now."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        handlers = _fast_handlers(self.logger)
        if handlers is None:
            for entry in pending:
                self.logger.handle(self._record(entry))
            return
        name = self.logger.name
        # Built once for every handler; the audit fields only when a format writes them.
        messages = [_message(entry) for entry in pending]
        uses_extra = any(_formatter(handler).uses_extra for handler in handlers)
        extras = [{"audit": _audit_fields(entry)} if uses_extra else {} for entry in pending]
        for handler in handlers:
            fields = _formatter(handler).format_fields
            lines = [
                fields(entry[0], "INFO", name, message, extra)
                for entry, message, extra in zip(pending, messages, extras, strict=True)
            ]
            text = handler.terminator.join(lines) + handler.terminator
            handler.acquire()
            try:
                handler.stream.write(text)
                handler.flush()
            except Exception:  # logging never raises into the caller
                handler.handleError(self._record(pending[0]))
            finally:
                handler.release()

    def _record(self, entry: _Entry) -> logging.LogRecord:
        record = self.logger.makeRecord(
            self.logger.name,
            logging.INFO,
            "",
            0,
            _message(entry),
            (),  # no %-args: the message is final
            None,
            extra={"audit": _audit_fields(entry)},
        )
        record.created = entry[0]
        record.msecs = (entry[0] - int(entry[0])) * 1000
        return record


# id(UUID) -> (the UUID, its text): str(UUID) is pure Python, and a hot route
# audits the same few cached cases over and over.
_GUID_TEXTS: dict[int, tuple[UUID, str]] = {}


def _guid_text(guid: UUID | str | None) -> str:
    if guid is None:
        return "-"
    if isinstance(guid, str):
        return guid
    known = _GUID_TEXTS.get(id(guid))
    if known is not None and known[0] is guid:
        return known[1]
    if len(_GUID_TEXTS) >= 4096:
        _GUID_TEXTS.clear()
    text = str(guid)
    _GUID_TEXTS[id(guid)] = (guid, text)
    return text


def _message(entry: _Entry) -> str:
    return f"granted {entry[2]} to {entry[1]} case={_guid_text(entry[3])} ip={entry[4] or '-'}"


def _audit_fields(entry: _Entry) -> dict[str, Any]:
    # The fields of AuditRecord.to_dict(), without building the Struct.
    when = datetime.fromtimestamp(entry[0], UTC)
    return _audit_dict(when, entry[1], entry[2], True, entry[3], entry[4], entry[5] or {})


def _formatter(handler: logging.Handler) -> FusionFormatter:
    formatter = handler.formatter
    assert isinstance(formatter, FusionFormatter)  # checked by _fast_handlers
    return formatter


def _fast_handlers(logger: logging.Logger) -> list[logging.StreamHandler[Any]] | None:
    """The handlers an INFO record of ``logger`` reaches, when all of them can take
    a batch of preformatted lines; None when any cannot (or there is none)."""
    found: list[logging.StreamHandler[Any]] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if (
                type(handler) not in _STREAM_HANDLERS
                or not isinstance(handler.formatter, FusionFormatter)
                or handler.filters
                or getattr(handler, "stream", None) is None
            ):
                return None
            if handler.level <= logging.INFO:
                found.append(handler)  # type: ignore[arg-type]
        if not current.propagate:
            break
        current = current.parent
    return found or None


_STREAM_HANDLERS = (logging.StreamHandler, logging.FileHandler)


REDACTED = "<redacted>"
"""What replaces the token of a download URL in the access log."""

_DOWNLOAD_ROUTE = "/api/download/"
_DOWNLOAD_TOKEN = re.compile(r"(/api/download/[^/?#\s\"]+/)[^/?#\s\"]+")


def redact_download_tokens(text: str) -> str:
    """``text`` with the token of every ``/api/download/{guid}/{token}`` replaced by
    :data:`REDACTED` (the guid is kept: it names the download, it opens nothing).

    The router matches the percent-decoded path, so ``/api/%64ownload/...`` or
    ``%2F`` reach the same route: when only the decoded text shows a download URL,
    the decoded text is what is redacted and returned.
    """
    if "%" in text:
        decoded = unquote(text)
        if decoded != text and _DOWNLOAD_TOKEN.search(decoded):
            text = decoded
    if _DOWNLOAD_ROUTE not in text:
        return text
    return _DOWNLOAD_TOKEN.sub(r"\1" + REDACTED, text)


class FusionAccessLogger(AccessLogger):
    """aiohttp's :class:`~aiohttp.web_log.AccessLogger` (same formats, same ``extra``
    fields), with :func:`redact_download_tokens` applied to every value it logs:
    the request line, and headers such as ``Referer`` that may carry the URL."""

    # aiohttp's one hook between computing the values and logging them (both the
    # message and the ``extra`` fields are built from what it returns).
    def _format_line(
        self, request: BaseRequest, response: StreamResponse, time: float
    ) -> Iterable[tuple[str | tuple[str, str], str]]:
        return [
            (key, redact_download_tokens(value) if isinstance(value, str) else value)
            for key, value in super()._format_line(request, response, time)
        ]
