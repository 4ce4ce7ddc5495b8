"""Server-sent events for both sides: :func:`format_sse` writes them, :func:`iter_sse` parses.

It imports no part of ``aiohttp.web``: a client that follows an event stream
never loads the server side.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncIterator
from typing import NamedTuple

import aiohttp

__all__ = ["SSE_KEEPALIVE", "SSEEvent", "format_sse", "iter_sse"]

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
