"""Receiving a file upload in a service's route: streamed to disk, capped, atomic."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

from aiohttp import web

from fusion.helper.filesystem import fsync_directory, safe_filename, safe_join
from fusion.helper.http_envelope import FusionHTTPError
from fusion.helper.http_request import UploadedFile, stream_multipart_to_file

__all__ = ["receive_upload"]


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
    client's file name; either is made safe by
    :func:`~fusion.helper.filesystem.safe_filename`. It is streamed to
    disk (never held in memory), refused with 413 past ``max_size`` bytes, and
    appears at its final name complete or not at all: on any error nothing is
    left behind. An existing file is replaced only with ``overwrite=True``
    (otherwise 409). A name with nothing usable left raises
    :class:`~fusion.helper.filesystem.UnsafePathError`, which the envelope answers 400;
    the body's own errors (413, 400, 408) and 409 are :class:`FusionHTTPError`.
    """
    directory = Path(directory)
    if filename is not None:
        filename = safe_filename(filename)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    # The client's name is only known once its part is read, so the data lands
    # under a hidden staging name first and is published once complete.
    staged = directory / f".upload-{secrets.token_hex(8)}.part"
    try:
        uploaded = await stream_multipart_to_file(request, staged, max_size=max_size, field=field)
        name = filename if filename is not None else safe_filename(uploaded.filename)
        final = safe_join(directory, name)
        try:
            await asyncio.to_thread(_publish, staged, final, overwrite)
        except FileExistsError:
            raise FusionHTTPError(409, f"{name!r} already exists") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    return UploadedFile(final, uploaded.size, uploaded.filename, uploaded.content_type)
