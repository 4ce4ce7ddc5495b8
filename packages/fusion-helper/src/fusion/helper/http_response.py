"""Answering with a file: :func:`stream_response` and a safe :func:`content_disposition`."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote

from fusion.helper.filesystem import safe_filename

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["content_disposition", "stream_response"]


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """A ``Content-Disposition`` value that is safe for any ``filename``.

    The name is made safe by :func:`~fusion.helper.filesystem.safe_filename`
    (``download`` when nothing is left); a non-ASCII name also gets an RFC 5987
    ``filename*=UTF-8''...`` parameter and an ASCII fallback in ``filename``.
    """
    name = safe_filename(filename, fallback="download")
    if name.isascii():
        return f'{disposition}; filename="{name}"'
    fallback = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    if fallback.startswith("."):
        fallback = "download" + fallback  # only the extension survived
    fallback = safe_filename(fallback, fallback="download")
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
