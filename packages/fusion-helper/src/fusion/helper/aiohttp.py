"""aiohttp helpers shared by Fusion servers and clients.

- the PROTOCOL.md response envelope (:func:`json_response`, :func:`error_response`,
  :class:`FusionHTTPError`) and :func:`envelope_middleware`, which turns every error
  (aiohttp's own 404/405/413, store outages, unexpected exceptions) into it;
- request input: :func:`get_guid`, :func:`read_json`, :func:`read_concept`,
  :func:`client_ip`, :func:`stream_multipart_to_file`, each body read bounded in
  time by :data:`BODY_TIMEOUT`;
- output: :func:`stream_response` and :func:`content_disposition`;
- server-sent events: :func:`format_sse` (server side) and :func:`iter_sse` (client side).
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import logging
import re
import unicodedata
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar
from urllib.parse import quote
from uuid import UUID

import aiohttp
import msgspec
from aiohttp.helpers import AppKey
from aiohttp.http import HttpProcessingError

from fusion.concept import Concept, json_decoder
from fusion.helper.store import StoreUnavailableError
from fusion.helper.streaming import SizeLimitError, stream_to_file

if TYPE_CHECKING:
    # aiohttp.web is imported where it is used: a client that only parses event
    # streams (iter_sse) never loads the server side of aiohttp.
    from aiohttp import web

__all__ = [
    "BODY_TIMEOUT",
    "DEFAULT_BODY_TIMEOUT",
    "SSE_KEEPALIVE",
    "FusionHTTPError",
    "IPNetwork",
    "SSEEvent",
    "UploadedFile",
    "client_ip",
    "content_disposition",
    "envelope_middleware",
    "error_response",
    "format_sse",
    "get_guid",
    "iter_sse",
    "json_response",
    "read_concept",
    "read_json",
    "stream_multipart_to_file",
    "stream_response",
]

_LOGGER = logging.getLogger("fusion.helper.aiohttp")

ConceptT = TypeVar("ConceptT", bound=Concept)

DEFAULT_BODY_TIMEOUT = 30.0
BODY_TIMEOUT: AppKey[float] = AppKey("fusion_body_timeout", float)
"""Seconds a request body may take to arrive (``app[BODY_TIMEOUT] = 30.0``), 408 past it.

:func:`read_json` and :func:`read_concept` give the whole body that long;
:func:`stream_multipart_to_file` gives it to each chunk, so a large upload is
not cut off while data flows. :data:`DEFAULT_BODY_TIMEOUT` when unset.
"""
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]

# ---------------------------------------------------------------------------
# envelope
# ---------------------------------------------------------------------------

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
        except Exception:
            log.exception("unexpected error: %s %s", request.method, request.path)
            if request.writer.output_size > 0:
                raise
            return error_response(500, "internal server error")

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
# request input
# ---------------------------------------------------------------------------


def get_guid(request: web.Request, name: str = "case_guid") -> UUID:
    """The GUID in the route parameter ``name``; 400 "invalid GUID" when malformed."""
    value = request.match_info.get(name)
    if value is None:
        raise FusionHTTPError(400, f"missing {name}")
    try:
        return UUID(value)
    except ValueError:
        raise FusionHTTPError(400, f"invalid GUID for {name}") from None


def _body_timeout(request: web.BaseRequest) -> float:
    from aiohttp import web

    if isinstance(request, web.Request):
        return request.config_dict.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)
    return DEFAULT_BODY_TIMEOUT  # a low-level web.Server has no application


def _late_body(timeout: float) -> _BodyAbandonedError:
    return _BodyAbandonedError(408, f"request body not received within {timeout:g} s")


# Content-Encoding -> zlib wbits. The server turns aiohttp's own decompression
# off (``auto_decompress``): its parser refused a bad body in plain text before
# any middleware, and it had no cap on what a small body inflates to.
_BODY_ENCODINGS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}


def _body_decoder(request: web.BaseRequest) -> Any:
    """A zlib decompressor for the body's ``Content-Encoding``; None for identity."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    wbits = _BODY_ENCODINGS.get(encoding)
    if wbits is None:
        shown = " ".join(encoding.split())[:50]
        raise FusionHTTPError(415, f"unsupported Content-Encoding {shown!r}: use gzip or deflate")
    return zlib.decompressobj(wbits)


def _too_large(max_size: int) -> FusionHTTPError:
    return FusionHTTPError(413, f"request body too large: limit is {max_size} bytes")


async def _read_body(request: web.BaseRequest, max_size: int) -> bytes:
    """The whole body, decoded (gzip, deflate), at most ``max_size`` bytes once decoded.

    Counted on the bytes actually received: Content-Length may be absent
    (chunked) or lie, and reading request.content directly bypasses
    client_max_size.
    """
    declared = request.content_length
    if declared is not None and declared > max_size:
        raise _too_large(max_size)
    decoder = _body_decoder(request)
    parts: list[bytes] = []
    total = 0
    timeout = _body_timeout(request)
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                if decoder is not None:
                    # Inflated at most one byte past the cap: a bomb stops here.
                    chunk = decoder.decompress(chunk, max_size - total + 1)
                    if decoder.unconsumed_tail:
                        raise _too_large(max_size)
                total += len(chunk)
                if total > max_size:
                    raise _too_large(max_size)
                parts.append(chunk)
    except TimeoutError:
        raise _late_body(timeout) from None
    except zlib.error as exc:
        raise FusionHTTPError(400, f"body does not decode as its Content-Encoding: {exc}") from None
    if decoder is not None and not decoder.eof:
        raise FusionHTTPError(400, "body does not decode as its Content-Encoding: truncated")
    return b"".join(parts)


def _check_json_content_type(request: web.BaseRequest) -> None:
    if not request.headers.get("Content-Type"):
        return  # Older scripts send bare bodies; the JSON parser still decides.
    mimetype = request.content_type.lower()
    if mimetype != _JSON_CONTENT_TYPE and not (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        raise FusionHTTPError(400, f"expected an application/json body, got {mimetype}")
    charset = request.charset
    if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise FusionHTTPError(400, f"JSON body must be UTF-8, not {charset}")


_BOM = codecs.BOM_UTF8


async def _read_json_bytes(request: web.BaseRequest, max_size: int) -> bytes:
    _check_json_content_type(request)
    body = await _read_body(request, max_size)
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    if not body.strip():
        raise FusionHTTPError(400, "empty body: expected JSON")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FusionHTTPError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    return body


async def read_json(request: web.BaseRequest, max_size: int) -> Any:
    """The JSON body as builtins; 413 above ``max_size`` bytes, 400 when not JSON."""
    body = await _read_json_bytes(request, max_size)
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise FusionHTTPError(400, f"invalid JSON body: {exc}") from None
    except RecursionError:
        raise FusionHTTPError(400, "invalid JSON body: nested too deeply") from None


async def read_concept(
    request: web.BaseRequest, concept_type: type[ConceptT], max_size: int
) -> ConceptT:
    """The JSON body decoded straight into ``concept_type``.

    400 names the field path (``$.acs[0]``) where validation failed.
    """
    body = await _read_json_bytes(request, max_size)
    try:
        result: ConceptT = json_decoder(concept_type).decode(body)
    except msgspec.ValidationError as exc:
        raise FusionHTTPError(400, f"invalid {concept_type.__name__}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise FusionHTTPError(400, f"invalid JSON body: {exc}") from None
    except RecursionError:
        raise FusionHTTPError(400, "invalid JSON body: nested too deeply") from None
    return result


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip().strip('"')
    if value.startswith("["):
        # "[v6]" or "[v6]:port"
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.partition(":")[0]  # "v4:port"
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _split_forwarded(header: str) -> list[str]:
    """The ``for=`` values of a Forwarded header (RFC 7239), in order; "" when absent."""
    values: list[str] = []
    # Split on commas outside quoted strings, then on semicolons.
    for element in re.findall(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+', header):
        found = ""
        for pair in re.findall(r'(?:[^;"]|"(?:[^"\\]|\\.)*")+', element):
            key, _, value = pair.partition("=")
            if key.strip().lower() == "for":
                found = value.strip()
        values.append(found)
    return values


def client_ip(
    request: web.BaseRequest,
    trusted_proxies: Sequence[IPNetwork] = (),
    *,
    header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for",
) -> str:
    """Address of the client, for logs, audit and rate limits.

    ``X-Forwarded-For`` (or RFC 7239 ``Forwarded`` with ``header="forwarded"``) is only
    believed when the direct peer is in ``trusted_proxies``; the chain is then walked
    right to left and the first address outside the trusted networks is the client.
    Only one header is read, the one your proxy sets: a proxy overwrites or appends to
    that one, while the other would pass through as the client wrote it.
    """
    peer = request.remote or "unknown"
    if not trusted_proxies:
        return peer

    def trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in trusted_proxies)

    peer_address = _parse_ip(peer)
    if peer_address is None or not trusted(peer_address):
        return peer
    if header == "forwarded":
        hops = [
            hop
            for value in request.headers.getall("Forwarded", [])
            for hop in _split_forwarded(value)
        ]
    else:
        hops = [
            hop.strip()
            for value in request.headers.getall("X-Forwarded-For", [])
            for hop in value.split(",")
        ]
    current = peer_address
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:
            # Garbage or an obfuscated identifier: nothing further left can be trusted.
            break
        current = address
        if not trusted(address):
            break
    return str(current)


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------

_UNSAFE_FILENAME = re.compile(r'[\x00-\x1f\x7f"\\/;]')
# Format characters (bidi overrides and isolates, zero-width marks) and lone
# surrogates: U+202E makes "report\u202egnp.exe" display as "report.exe.png".
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cs"})


def _visible(name: str) -> str:
    return "".join(char for char in name if unicodedata.category(char) not in _INVISIBLE_CATEGORIES)


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """A ``Content-Disposition`` value that is safe for any ``filename``.

    Directory parts, control characters (CR/LF), quotes and separators are replaced;
    bidirectional controls and other invisible format characters are removed;
    non-ASCII names also get an RFC 5987 ``filename*=UTF-8''...`` parameter and an
    ASCII fallback in ``filename``.
    """
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_FILENAME.sub("_", _visible(unicodedata.normalize("NFC", name))).strip(" .")
    if not name:
        name = "download"
    if name.isascii():
        return f'{disposition}; filename="{name}"'
    fallback = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    fallback = _UNSAFE_FILENAME.sub("_", fallback).strip(" ")
    if not fallback.strip("."):
        fallback = "download"
    elif fallback.startswith("."):
        fallback = "download" + fallback  # only the extension survived
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def stream_response(
    request: web.BaseRequest,
    chunks: AsyncIterator[bytes] | Iterable[bytes],
    filename: str,
    content_type: str = "application/octet-stream",
    size: int | None = None,
) -> web.StreamResponse:
    """Stream ``chunks`` as a download (chunked unless ``size`` is known).

    If the source fails midway the exception propagates and the connection is
    dropped, so the client never mistakes a partial file for a complete one.
    """
    from aiohttp import web

    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Content-Disposition": content_disposition(filename),
            "X-Content-Type-Options": "nosniff",
        }
    )
    if size is not None:
        response.content_length = size
    await response.prepare(request)
    if isinstance(chunks, AsyncIterator):
        async for chunk in chunks:
            await response.write(chunk)
    else:
        for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


class UploadedFile(NamedTuple):
    """A multipart field saved to disk. ``filename`` is the client's claim: untrusted."""

    path: Path
    size: int
    filename: str | None
    content_type: str | None


async def stream_multipart_to_file(
    request: web.Request,
    path: Path | str,
    *,
    max_size: int,
    field: str = "file",
) -> UploadedFile:
    """Save the multipart field ``field`` to ``path`` without buffering it in memory.

    Written atomically (temporary file beside ``path``, fsync, rename): on any error,
    including 413 above ``max_size`` bytes, nothing is left at ``path``. Other fields
    are skipped. 400 when the body is not multipart or the field is missing; 408
    when no data came for :data:`BODY_TIMEOUT` seconds.
    """
    if not request.content_type.startswith("multipart/"):
        raise FusionHTTPError(
            400, f"expected a multipart/form-data body, got {request.content_type}"
        )
    if _body_decoder(request) is not None:
        # Files are compressed in their parts, if at all: a whole encoded body is refused.
        raise FusionHTTPError(415, "an upload must not have a Content-Encoding")
    timeout = _body_timeout(request)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout) as deadline:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    raise FusionHTTPError(400, f"multipart field {field!r} is missing")
                if not isinstance(part, aiohttp.BodyPartReader) or part.name != field:
                    continue  # skipped: next() drains what we did not read
                filename = part.filename
                content_type = part.headers.get("Content-Type")

                async def chunks(
                    body: aiohttp.BodyPartReader = part,
                ) -> AsyncIterator[bytes]:
                    while chunk := await body.read_chunk():
                        # An idle timeout: a large file may take long while data flows.
                        deadline.reschedule(loop.time() + timeout)
                        yield chunk

                try:
                    size = await stream_to_file(chunks(), path, max_size=max_size)
                except SizeLimitError:
                    raise FusionHTTPError(
                        413, f"upload too large: limit is {max_size} bytes"
                    ) from None
                return UploadedFile(Path(path), size, filename, content_type)
    except TimeoutError:
        raise _late_body(timeout) from None
    except (ValueError, AssertionError, aiohttp.ClientPayloadError) as exc:
        # aiohttp's multipart reader reports malformed bodies with these.
        raise FusionHTTPError(400, f"malformed multipart body: {exc}") from None


# ---------------------------------------------------------------------------
# server-sent events
# ---------------------------------------------------------------------------

SSE_KEEPALIVE = b": keepalive\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")


class SSEEvent(NamedTuple):
    """One dispatched event of a ``text/event-stream``.

    ``id`` is the stream's last event ID when the event was dispatched (it carries over
    events without an ``id:`` line, as in browsers; None while unset or empty);
    ``retry`` is the latest reconnection time in milliseconds sent by the server, or None.
    ``event`` is None when no ``event:`` line named the type ("message").
    """

    id: str | None
    event: str | None
    data: str
    retry: int | None


def format_sse(
    data: bytes | str,
    id: str | None = None,
    event: str | None = None,
    *,
    retry: int | None = None,
) -> bytes:
    """One event in ``text/event-stream`` form; multi-line data becomes several ``data:``."""
    head = b""
    if id is not None:
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError("SSE id must not contain CR, LF or NUL")
        head += b"id: " + id.encode() + b"\n"
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("SSE event type must not contain CR or LF")
        head += b"event: " + event.encode() + b"\n"
    if retry is not None:
        head += b"retry: %d\n" % retry
    raw = data.encode() if isinstance(data, str) else data
    if b"\n" not in raw and b"\r" not in raw:
        return head + b"data: " + raw + b"\n\n"
    lines = _LINE_BREAK_BYTES.split(raw)
    return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


async def _sse_chunks(
    content: aiohttp.StreamReader | AsyncIterator[bytes],
) -> AsyncIterator[bytes]:
    if isinstance(content, aiohttp.StreamReader):
        async for chunk in content.iter_any():
            yield chunk
    else:
        async for chunk in content:
            yield chunk


async def iter_sse(
    content: aiohttp.StreamReader | AsyncIterator[bytes],
    *,
    max_event_size: int = 16 * 1024 * 1024,
) -> AsyncIterator[SSEEvent]:
    """Parse a ``text/event-stream`` per the WHATWG rules, yielding dispatched events.

    Lines end with CRLF, LF or CR (also split across chunks); a leading BOM is
    ignored; ``:`` lines are comments; a field without a colon has an empty value;
    an event without ``data`` is not dispatched, nor is an unterminated last one.
    Raises ValueError when a line or event exceeds ``max_event_size`` characters.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer = ""
    started = False
    last_id = ""
    retry: int | None = None
    event_type = ""
    data: list[str] = []
    data_size = 0
    eof = False
    chunks = _sse_chunks(content)
    while not eof:
        try:
            chunk = await anext(chunks)
            text = decoder.decode(chunk)
        except StopAsyncIteration:
            eof = True
            text = decoder.decode(b"", final=True)
        if not started and text:
            started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        buffer += text
        position = 0
        while True:
            match = _LINE_BREAK.search(buffer, position)
            if match is None:
                break
            if match.group() == "\r" and match.end() == len(buffer) and not eof:
                break  # maybe the first half of a CRLF split across chunks
            line = buffer[position : match.start()]
            position = match.end()
            if not line:
                if data:
                    yield SSEEvent(last_id or None, event_type or None, "\n".join(data), retry)
                data = []
                data_size = 0
                event_type = ""
                continue
            if line.startswith(":"):
                continue
            name, colon, value = line.partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            if name == "data":
                data_size += len(value) + 1
                if data_size > max_event_size:
                    raise ValueError(f"SSE event larger than {max_event_size} characters")
                data.append(value)
            elif name == "event":
                event_type = value
            elif name == "id" and "\0" not in value:
                last_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                retry = int(value)
        buffer = buffer[position:]
        if len(buffer) > max_event_size:
            raise ValueError(f"SSE line longer than {max_event_size} characters")
