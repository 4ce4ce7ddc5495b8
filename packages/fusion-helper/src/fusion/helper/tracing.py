"""The audit trail: one structured line per access decision, on ``fusion.audit``.

Each decision is logged at INFO (granted) or WARNING (refused) with the message
``"granted case.read to alice case=<guid> ip=<addr>"`` and the record's ``audit``
attribute (from ``extra=``) holding the JSON-compatible :class:`AuditRecord`
fields, which the JSON log format writes as one object. They are ordinary
LogRecords: whatever handler a user puts on ``fusion.audit`` (or above) gets them.

:class:`FusionAccessLogger` is the access log: one line per request, with the
token of every ``/api/download/{guid}/{token}`` URL redacted (a pending download
key is a credential, and log files are read by more people than the files it
opens).

Both run on every request: they build their message once, as a record without
arguments nor caller lookup (``findCaller`` walks the stack; the line of the
logging call says nothing here), and do nothing at all when the logger is not
enabled for the level.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any
from urllib.parse import unquote
from uuid import UUID

import msgspec
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from fusion.concept import Identity
from fusion.helper.datetime import timestamp_iso

__all__ = [
    "AUDIT_LOGGER",
    "REDACTED",
    "AuditRecord",
    "FusionAccessLogger",
    "redact_download_tokens",
    "trace_user_op",
]

AUDIT_LOGGER = logging.getLogger("fusion.audit")


class AuditRecord(msgspec.Struct, kw_only=True):
    """Who tried what, on which case, from where, and whether it was allowed: the
    fields of the ``audit`` attribute of every ``fusion.audit`` record
    (``msgspec.convert(record.audit, AuditRecord)`` reads one back)."""

    time: datetime
    who: str
    action: str
    granted: bool
    case_guid: UUID | None = None
    client_ip: str | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible fields, as the ``audit`` attribute holds them."""
        return _audit_dict(
            self.time.isoformat(),
            self.who,
            self.action,
            self.granted,
            None if self.case_guid is None else str(self.case_guid),
            self.client_ip,
            self.context,
        )


def _audit_dict(
    when: str,
    who: str,
    action: str,
    granted: bool,
    case_guid: str | None,
    client_ip: str | None,
    context: dict[str, Any],
) -> dict[str, Any]:
    return {
        "time": when,
        "who": who,
        "action": action,
        "granted": granted,
        "case_guid": case_guid,
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
) -> None:
    """Record one access decision on ``logger`` (``fusion.audit``): INFO when
    ``granted``, WARNING when not; nothing at all when ``logger`` is not enabled
    for that level. A ``case_guid`` string must be a UUID (ValueError)."""
    level = logging.INFO if granted else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    who = (
        identity_or_username.username
        if isinstance(identity_or_username, Identity)
        else identity_or_username
    )
    if isinstance(case_guid, str):
        case_guid = UUID(case_guid)  # checked: a ValueError, not a wrong record
    guid = None if case_guid is None else str(case_guid)
    record = logger.makeRecord(
        logger.name,
        level,
        "",
        0,
        f"{'granted' if granted else 'denied'} {action} to {who} "
        f"case={guid or '-'} ip={client_ip or '-'}",
        (),
        None,
    )
    # The decision's time is the record's, to the microsecond.
    record.audit = _audit_dict(
        timestamp_iso(record.created),
        who,
        action,
        granted,
        guid,
        client_ip,
        context or {},
    )
    logger.handle(record)


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


class FusionAccessLogger(AbstractAccessLogger):
    """The access log (``access_log_class`` of aiohttp): one INFO record per request,

    ``127.0.0.1 "GET /api/case/... HTTP/1.1" 200 1234 0.512ms "<referer>" "<user agent>"``

    followed by `` id=<X-Request-ID>`` when the request carries one. The request
    line and the headers go through :func:`redact_download_tokens` (a ``Referer``
    may carry a download URL too); the text format escapes what the network sent
    (see :func:`fusion.helper.logging.escape_text`). The record's ``extra``
    fields, which the JSON format writes: ``remote_address``,
    ``first_request_line``, ``response_status``, ``response_size``,
    ``request_time`` (seconds), ``request_header`` (``Referer``, ``User-Agent``)
    and ``request_id`` when there is one. ``log_format`` is ignored.
    """

    @property
    def enabled(self) -> bool:
        """Whether INFO records of the logger go anywhere (aiohttp asks per connection)."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """Log the line of one answered request."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        headers = request.headers
        version = request.version
        request_line = redact_download_tokens(
            f"{request.method} {request.raw_path} HTTP/{version.major}.{version.minor}"
        )
        referer = redact_download_tokens(headers.get("Referer", "-"))
        agent = redact_download_tokens(headers.get("User-Agent", "-"))
        remote = request.remote or "-"
        status = response.status
        size = response.body_length
        message = (
            f'{remote} "{request_line}" {status} {size} {time * 1000:.3f}ms "{referer}" "{agent}"'
        )
        record = logger.makeRecord(logger.name, logging.INFO, "", 0, message, (), None)
        # The extra fields, set as makeRecord(extra=...) would, without its check
        # of each name (these never clash with a LogRecord attribute).
        fields = record.__dict__
        fields["remote_address"] = remote
        fields["first_request_line"] = request_line
        fields["response_status"] = status
        fields["response_size"] = size
        fields["request_time"] = time
        fields["request_header"] = {"Referer": referer, "User-Agent": agent}
        request_id = headers.get("X-Request-ID")
        if request_id is not None:
            record.msg = f"{message} id={request_id}"
            fields["request_id"] = request_id
        logger.handle(record)
