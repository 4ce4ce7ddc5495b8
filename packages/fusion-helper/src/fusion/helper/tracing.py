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

Request ids: :func:`setup_request_ids` gives every request of an application an
id, the request's own ``X-Request-ID`` when it is acceptable (printable ASCII
without space, quote or backslash, at most :data:`MAX_REQUEST_ID_LENGTH`
characters), else a new random one. The id is echoed in the response's
``X-Request-ID``, kept on the request (``request[REQUEST_ID]``, or
:func:`request_id`), and for the time of the handler in a context variable
(:func:`current_request_id`) that puts it in the audit records of that request
and in the access log.

Both run on every request: they build their message once, as a record without
arguments nor caller lookup (``findCaller`` walks the stack; the line of the
logging call says nothing here), and do nothing at all when the logger is not
enabled for the level.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any
from urllib.parse import unquote
from uuid import UUID

import msgspec
from aiohttp.abc import AbstractAccessLogger
from aiohttp.helpers import RequestKey
from aiohttp.web_app import Application
from aiohttp.web_middlewares import middleware
from aiohttp.web_request import BaseRequest, Request
from aiohttp.web_response import StreamResponse

from fusion.concept import Identity
from fusion.helper.datetime import timestamp_iso

__all__ = [
    "AUDIT_LOGGER",
    "MAX_REQUEST_ID_LENGTH",
    "REDACTED",
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "AuditRecord",
    "FusionAccessLogger",
    "current_request_id",
    "redact_download_tokens",
    "request_id",
    "setup_request_ids",
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
    request_id: str | None = None
    """The ``X-Request-ID`` of the request that made the decision (the key is
    absent from a record made outside a request)."""

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
            self.request_id,
        )


def _audit_dict(
    when: str,
    who: str,
    action: str,
    granted: bool,
    case_guid: str | None,
    client_ip: str | None,
    context: dict[str, Any],
    request_id: str | None,
) -> dict[str, Any]:
    fields = {
        "time": when,
        "who": who,
        "action": action,
        "granted": granted,
        "case_guid": case_guid,
        "client_ip": client_ip,
        "context": context,
    }
    if request_id is not None:
        fields["request_id"] = request_id
    return fields


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
        _CURRENT_REQUEST_ID.get(),
    )
    logger.handle(record)


REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
"""Longer incoming ``X-Request-ID`` values are replaced by a new id."""
REQUEST_ID: RequestKey[str] = RequestKey("fusion_request_id", str)
"""The request's id (set by :func:`setup_request_ids`); see :func:`request_id`."""

# Printable ASCII but space, double quote and backslash: nothing a log line or
# a header must escape.
_ACCEPTED_REQUEST_ID = re.compile(rf"[!#-\[\]-~]{{1,{MAX_REQUEST_ID_LENGTH}}}")
_CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("fusion_request_id", default=None)


def request_id(request: BaseRequest) -> str:
    """The id of ``request``: its ``X-Request-ID`` when acceptable, else 16 random hex
    digits; chosen once, then kept under :data:`REQUEST_ID`."""
    found = request.get(REQUEST_ID)
    if found is None:
        incoming = request.headers.get(REQUEST_ID_HEADER)
        if incoming is not None and _ACCEPTED_REQUEST_ID.fullmatch(incoming):
            found = incoming
        else:
            found = os.urandom(8).hex()
        request[REQUEST_ID] = found
    return found


def current_request_id() -> str | None:
    """The id of the request being handled (in its handler and what it awaits), else None."""
    return _CURRENT_REQUEST_ID.get()


@middleware
async def _request_id_middleware(
    request: Request, handler: Callable[[Request], Awaitable[StreamResponse]]
) -> StreamResponse:
    token = _CURRENT_REQUEST_ID.set(request_id(request))
    try:
        return await handler(request)
    finally:
        _CURRENT_REQUEST_ID.reset(token)


async def _echo_request_id(request: Request, response: StreamResponse) -> None:
    response.headers[REQUEST_ID_HEADER] = request_id(request)


def setup_request_ids(app: Application) -> None:
    """Give each request of ``app`` an id (see :func:`request_id`), echoed in the
    response's ``X-Request-ID`` (streamed responses too) and current for its handler
    (:func:`current_request_id`, the audit records). Its middleware goes first."""
    app.middlewares.insert(0, _request_id_middleware)
    app.on_response_prepare.append(_echo_request_id)


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

    followed by `` id=<request id>`` when the request has one (:func:`request_id`:
    every request an application with :func:`setup_request_ids` handled). The request
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
        the_id = request.get(REQUEST_ID)
        if the_id is not None:
            record.msg = f"{message} id={the_id}"
            fields["request_id"] = the_id
        logger.handle(record)
