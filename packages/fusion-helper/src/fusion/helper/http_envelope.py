"""The PROTOCOL.md response envelope, and the middleware that answers every error with it.

:func:`json_response`, :func:`error_response`, :class:`FusionHTTPError` and
:func:`envelope_middleware`, which turns aiohttp's own 404/405/413, store outages,
domain errors (:func:`map_error`) and unexpected exceptions into the envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from aiohttp.helpers import AppKey
from aiohttp.http import HttpProcessingError

from fusion.helper.filesystem import UnsafePathError
from fusion.helper.store import StoreUnavailableError
from fusion.helper.streaming import SizeLimitError

if TYPE_CHECKING:
    # aiohttp.web is imported where it is used, so importing this module stays cheap.
    from aiohttp import web

__all__ = [
    "ERROR_STATUSES",
    "ErrorStatus",
    "FusionHTTPError",
    "envelope_middleware",
    "error_response",
    "json_response",
    "map_error",
]

# The name operators' logging configurations know (the module was fusion.helper.aiohttp).
_LOGGER = logging.getLogger("fusion.helper.aiohttp")

Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]

_ENCODER = msgspec.json.Encoder(order="deterministic")
_JSON_CONTENT_TYPE = "application/json"
# Headers of an aiohttp HTTPException that describe its plain-text body, not the error.
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})


class FusionHTTPError(Exception):
    """An error answered with the envelope: raise it from a handler.

    ``headers`` (``Retry-After``, ``WWW-Authenticate``, ...) are sent with the answer.
    """

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"FusionHTTPError status must be 4xx or 5xx, got {status}")
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class _BodyAbandonedError(FusionHTTPError):
    """The body was not read to its end: the answer closes the connection.

    Without that, aiohttp would keep reading (and dropping) the rest of the body
    for its lingering time, or, when the body cannot be decoded, fail again there.
    """


def _count(data: Any) -> int:
    if isinstance(data, msgspec.Struct):
        config = data.__struct_config__
        if config.omit_defaults or config.array_like:
            # Only the encoded form knows which fields remain: rare, so pay for it here.
            return len(msgspec.to_builtins(data))
        return len(data.__struct_fields__)
    if isinstance(data, str | list | tuple | dict | set | frozenset):
        return len(data)
    raise TypeError(
        f"envelope data must be a Concept, a list, a dict or a str, not {type(data).__name__}"
    )


def json_response(
    data: Any = None,
    status: int = 200,
    message: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The PROTOCOL.md envelope: ``{"status", "data", "count", "message"}``.

    ``data`` (a Concept, a list of Concepts, a dict, a list or a str) is encoded in
    the same pass as the envelope; ``count`` is ``len(data)``; ``message`` is sent
    with error statuses (a default reason is used when none is given).
    """
    envelope: dict[str, Any] = {"status": status}
    if data is not None:
        envelope["data"] = data
        envelope["count"] = _count(data)
    if status >= 400:
        envelope["message"] = message or _reason(status)
    elif message is not None:
        envelope["message"] = message
    from aiohttp import web

    return web.Response(
        body=_ENCODER.encode(envelope),
        status=status,
        content_type=_JSON_CONTENT_TYPE,
        headers=headers,
    )


def error_response(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Error envelope ``{"status": status, "message": message}``."""
    return json_response(None, status, message, headers=headers)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _http_exception_message(exc: web.HTTPException) -> str:
    text = exc.text
    # aiohttp's default body is "<status>: <reason>"; a custom text is the better reason.
    if not text or text == f"{exc.status}: {exc.reason}":
        return exc.reason
    return text.strip()


def envelope_middleware(*, logger: logging.Logger | None = None) -> Any:
    """aiohttp middleware that answers every error with the envelope.

    - :class:`FusionHTTPError` and aiohttp's ``HTTPException`` (4xx/5xx, including the
      404/405 of the router and the 413 of ``client_max_size``) keep their status and
      headers such as ``Allow`` or ``Retry-After``;
    - :class:`~fusion.helper.store.StoreUnavailableError` becomes 503
      "shared store unavailable";
    - a body that cannot be read (a ``Content-Encoding`` that does not decode, an
      over-long or invalid multipart header) is a 400 that closes the connection; a
      client that closed the connection mid-body gets one DEBUG line and a 400 it
      never reads (the access log shows no 500);
    - a domain error mapped by :func:`map_error` (or one of the helper's own:
      unsafe path 400, size limit 413) gets its status and an INFO log line;
    - anything else is logged and answered 500 "internal server error", never with
      a traceback.

    Redirects and other non-error ``HTTPException`` pass through untouched. When a
    streamed response has already started, the exception is re-raised so aiohttp
    drops the connection (the client sees a truncated transfer, not a fake success).
    """
    from aiohttp import web

    log = logger or _LOGGER

    @web.middleware
    async def fusion_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _BodyAbandonedError as exc:
            if request.writer.output_size > 0:
                raise
            return await _answer_and_close(request, exc)
        except FusionHTTPError as exc:
            if request.writer.output_size > 0:
                raise
            return error_response(exc.status, exc.message, headers=exc.headers)
        except (web.RequestPayloadError, HttpProcessingError, ConnectionResetError) as exc:
            transport = request.transport
            if transport is None or transport.is_closing():
                log.debug("client closed the connection: %s %s", request.method, request.path)
                return error_response(400, "the client closed the connection")
            if isinstance(exc, ConnectionResetError) or request.writer.output_size > 0:
                # Another connection of the handler's (an upstream call) failed.
                log.exception("unexpected error: %s %s", request.method, request.path)
                if request.writer.output_size > 0:
                    raise
                return error_response(500, "internal server error")
            # RequestPayloadError wraps the parser's error (a bad Content-Encoding).
            cause = exc if isinstance(exc, HttpProcessingError) else exc.__cause__
            reason = cause.message if isinstance(cause, HttpProcessingError) else str(exc)
            message = " ".join(str(reason).split())[:200] or "unreadable"
            error = _BodyAbandonedError(400, f"malformed request body: {message}")
            return await _answer_and_close(request, error)
        except web.HTTPException as exc:
            if exc.status < 400 or request.writer.output_size > 0:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
            return error_response(exc.status, _http_exception_message(exc), headers=headers)
        except StoreUnavailableError as exc:
            log.warning("shared store unavailable: %s %s: %s", request.method, request.path, exc)
            if request.writer.output_size > 0:
                raise
            return error_response(503, "shared store unavailable")
        except Exception as exc:
            answer = _domain_answer(request, exc)
            if answer is not None:
                log.info("refused: %s %s: %r", request.method, request.path, exc)
            else:
                log.exception("unexpected error: %s %s", request.method, request.path)
            if request.writer.output_size > 0:
                raise
            return answer or error_response(500, "internal server error")

    return fusion_envelope


async def _answer_and_close(request: web.Request, error: FusionHTTPError) -> web.StreamResponse:
    # Sent here, then the connection is closed at once: no lingering read of the
    # rest of a body that is late, undecodable or already refused.
    response = error_response(error.status, error.message, headers=error.headers)
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionResetError:
        _LOGGER.debug("client closed the connection: %s %s", request.method, request.path)
    request.protocol.force_close()
    return response


# ---------------------------------------------------------------------------
# domain errors
# ---------------------------------------------------------------------------


class ErrorStatus(NamedTuple):
    """How the envelope answers a domain error: ``status``, and ``message``.

    ``message`` None shows the exception's own text, which must then name
    nothing private (no server path); a fixed message hides it (it is logged).
    """

    status: int
    message: str | None = None


_DEFAULT_ERROR_STATUSES: Mapping[type[Exception], ErrorStatus] = {
    UnsafePathError: ErrorStatus(400),
    SizeLimitError: ErrorStatus(413),
}

ERROR_STATUSES: AppKey[dict[type[Exception], ErrorStatus]] = AppKey("fusion_error_statuses")
"""The application's domain errors and their answers, filled by :func:`map_error`."""


def map_error(
    app: web.Application, error: type[Exception], status: int, message: str | None = None
) -> None:
    """Answer ``error`` (and its subclasses) raised by a handler of ``app`` with ``status``.

    Domain code raises its own errors; the API that owns them maps them once, in
    its ``setup(app)``. Already mapped: :class:`~fusion.helper.filesystem.UnsafePathError`
    400 and :class:`~fusion.helper.streaming.SizeLimitError` 413. An error with a
    ``retry_after`` attribute (seconds) is answered with ``Retry-After``.
    """
    if not 400 <= status <= 599:
        raise ValueError(f"an error status must be 4xx or 5xx, got {status}")
    app.setdefault(ERROR_STATUSES, {})[error] = ErrorStatus(status, message)


def _domain_answer(request: web.Request, exc: Exception) -> web.Response | None:
    mapped = request.config_dict.get(ERROR_STATUSES, {})
    for cls in type(exc).__mro__:
        answer = mapped.get(cls) or _DEFAULT_ERROR_STATUSES.get(cls)
        if answer is not None:
            break
    else:
        return None
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, round(retry_after)))
    message = answer.message or " ".join(str(exc).split())[:500] or None
    return error_response(answer.status, message or _reason(answer.status), headers=headers)
