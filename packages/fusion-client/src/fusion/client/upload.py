"""Multipart uploads: a file streamed from disk with progress, plus form fields."""

from __future__ import annotations

import asyncio
import mimetypes
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp
import msgspec
from aiohttp.abc import AbstractStreamWriter

from fusion.client.errors import FusionClientError
from fusion.client.progress import ProgressMeter, TransferProgressCallback

__all__ = ["FileUploadPayload", "form_fields", "multipart_body"]

_CHUNK_SIZE = 256 * 1024


def form_fields(fields: msgspec.Struct | Mapping[str, Any]) -> dict[str, str]:
    """The text parts of ``fields``, as the server's ``receive_upload(fields=Type)`` reads them.

    A Struct is first turned into builtins (``msgspec.to_builtins``: enums,
    datetimes and UUIDs become their strings). Then each string is sent as
    it is and any other value as JSON (``7``, ``true``, ``["a", "b"]``, a
    nested Struct's object); a ``None`` value is left out, so the server
    uses the field's default.
    """
    values = msgspec.to_builtins(fields)
    if not isinstance(values, dict):
        raise TypeError(f"upload fields must be a Struct or a mapping, not {type(fields).__name__}")
    return {
        str(name): value if isinstance(value, str) else msgspec.json.encode(value).decode()
        for name, value in values.items()
        if value is not None
    }


class FileUploadPayload(aiohttp.payload.Payload):
    """A file's first ``size`` bytes, read from disk in chunks as the body is sent.

    Each chunk is read in a worker thread (disk reads block) and counted by
    ``meter`` once written. The size is known in advance, so the body has a
    ``Content-Length``. A file that shrinks while it is sent aborts the upload.
    """

    def __init__(
        self,
        path: Path,
        size: int,
        meter: ProgressMeter,
        *,
        filename: str,
        content_type: str,
    ) -> None:
        super().__init__(path, content_type=content_type, filename=filename)
        self._path = path
        self._size = self._length = size
        self._meter = meter

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file upload is sent as bytes, never decoded")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        remaining = self._length if content_length is None else min(self._length, content_length)
        fobj: IO[bytes] = await asyncio.to_thread(self._path.open, "rb")
        try:
            self._meter.start()
            while remaining > 0:
                chunk = await asyncio.to_thread(fobj.read, min(_CHUNK_SIZE, remaining))
                if not chunk:
                    raise FusionClientError(f"{self._path} shrank while it was uploaded")
                await writer.write(chunk)
                remaining -= len(chunk)
                self._meter.advance(len(chunk))
        finally:
            await asyncio.to_thread(fobj.close)


async def multipart_body(
    path: Path,
    *,
    field: str = "file",
    filename: str | None = None,
    content_type: str | None = None,
    fields: msgspec.Struct | Mapping[str, Any] | None = None,
    on_progress: TransferProgressCallback | None = None,
) -> aiohttp.MultipartWriter:
    """A ``multipart/form-data`` body: the text ``fields`` first, then ``path`` as ``field``.

    Nothing is read yet but the file's size: the data is read as the body is sent.
    """
    try:
        info = await asyncio.to_thread(path.stat)
    except OSError as exc:
        raise FusionClientError(f"cannot upload {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise FusionClientError(f"cannot upload {path}: not a regular file")
    name = filename if filename is not None else path.name
    kind = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    body = aiohttp.MultipartWriter("form-data")
    for key, text in form_fields(fields if fields is not None else {}).items():
        part = body.append(text)
        part.set_content_disposition("form-data", name=key)
    meter = ProgressMeter(on_progress, info.st_size)
    payload = FileUploadPayload(path, info.st_size, meter, filename=name, content_type=kind)
    payload.set_content_disposition("form-data", name=field, filename=name)
    body.append_payload(payload)
    return body
