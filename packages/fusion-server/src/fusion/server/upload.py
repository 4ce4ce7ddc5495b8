"""Receiving a file upload in a service's route: streamed to disk, capped, atomic."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import unicodedata
from pathlib import Path

from aiohttp import web

from fusion.helper.aiohttp import FusionHTTPError, UploadedFile, stream_multipart_to_file
from fusion.helper.filesystem import UnsafePathError, fsync_directory, safe_join

__all__ = ["receive_upload", "safe_upload_name"]

_MAX_NAME_BYTES = 255


def safe_upload_name(filename: str | None) -> str:
    """A file name made from a client's claim, or a 400 :class:`FusionHTTPError`.

    Only the last path component is kept (``C:\\x\\a.txt`` gives ``a.txt``);
    names that are empty, hidden, ``.``/``..``, contain control characters or
    are longer than 255 bytes are refused.
    """
    if not filename:
        raise FusionHTTPError(400, "the uploaded file has no file name")
    name = unicodedata.normalize("NFC", filename.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if (
        not name
        or name.startswith(".")
        or any(unicodedata.category(char).startswith("C") for char in name)
        or len(name.encode()) > _MAX_NAME_BYTES
    ):
        raise FusionHTTPError(400, f"unacceptable file name {filename!r}")
    return name


def _publish(staged: Path, final: Path, overwrite: bool) -> None:
    # link() refuses an existing target atomically, where exists() then rename() would race.
    try:
        if overwrite:
            os.replace(staged, final)
        else:
            os.link(staged, final)
            staged.unlink()
        fsync_directory(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()


async def receive_upload(
    request: web.Request,
    directory: Path | str,
    filename: str | None = None,
    *,
    max_size: int,
    field: str = "file",
    overwrite: bool = False,
) -> UploadedFile:
    """Save the multipart field ``field`` of ``request`` into ``directory``.

    The file is named ``filename`` when given (chosen by the service), else the
    client's file name made safe by :func:`safe_upload_name`. It is streamed to
    disk (never held in memory), refused with 413 past ``max_size`` bytes, and
    appears at its final name complete or not at all: on any error nothing is
    left behind. An existing file is replaced only with ``overwrite=True``
    (otherwise 409). Errors are :class:`FusionHTTPError` (400, 409, 413) that the
    envelope middleware answers.
    """
    directory = Path(directory)
    if filename is not None:
        filename = safe_upload_name(filename)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    # The client's name is only known once its part is read, so the data lands
    # under a hidden staging name first and is published once complete.
    staged = directory / f".upload-{secrets.token_hex(8)}.part"
    try:
        uploaded = await stream_multipart_to_file(request, staged, max_size=max_size, field=field)
        name = filename if filename is not None else safe_upload_name(uploaded.filename)
        try:
            final = safe_join(directory, name)
        except UnsafePathError as exc:
            raise FusionHTTPError(400, f"unacceptable file name {name!r}") from exc
        try:
            await asyncio.to_thread(_publish, staged, final, overwrite)
        except FileExistsError:
            raise FusionHTTPError(409, f"{name!r} already exists") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    return UploadedFile(final, uploaded.size, uploaded.filename, uploaded.content_type)
