"""One-time downloads: a handler prepares a key, anyone holding it fetches the file once."""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
import secrets
from pathlib import Path
from uuid import uuid4

import msgspec
from aiohttp import web

from fusion.concept import PendingDownloadKey
from fusion.helper.http_envelope import error_response, map_error
from fusion.helper.http_request import get_guid
from fusion.helper.http_response import stream_response
from fusion.helper.store import SharedStore
from fusion.helper.streaming import iter_file
from fusion.server.appkeys import DOWNLOADS, STORE
from fusion.server.download.config import FusionDownloadConfig
from fusion.server.openapi import OCTET_STREAM, operation
from fusion.server.routing import expect_handler

__all__ = [
    "DOWNLOADS",
    "DownloadError",
    "DownloadRootError",
    "FusionDownloadAPI",
    "TooManyPendingDownloadsError",
]

_LOGGER = logging.getLogger(__name__)

_KEY_PREFIX = "download:key:"
_PENDING_SET = "download:pending"
_TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22,128}$")


class DownloadError(Exception):
    """A download cannot be prepared; the API's ``setup`` maps each kind to its answer."""


class DownloadRootError(DownloadError, ValueError):
    """The file is not a regular file under one of the configured download roots.

    Its message names the path, for the log; uncaught in a handler, it is
    answered 404 "file not found" (which names no path).
    """


class TooManyPendingDownloadsError(DownloadError, RuntimeError):
    """The cap of pending download keys is reached: answered 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _PendingDownload(msgspec.Struct, kw_only=True):
    token: str
    filepath: str
    filename: str


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(_PendingDownload)


def _new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(_TOKEN_BYTES)).rstrip(b"=").decode()


class FusionDownloadAPI:
    """``GET /api/download/{guid}/{token}`` and :meth:`prepare` for handlers.

    Keys live in the shared store (any replica serves the fetch), expire
    after ``config.ttl`` seconds and work once. At most ``config.max_pending``
    keys exist at a time.
    """

    def __init__(self, config: FusionDownloadConfig, store: SharedStore | None = None) -> None:
        self.config = config
        self._store = store
        self._roots = [Path(root).resolve() for root in config.roots]

    # -- wiring --------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        """Add the route; the store comes from ``app[STORE]`` unless given."""
        app[DOWNLOADS] = self
        map_error(app, DownloadRootError, 404, "file not found")
        map_error(app, TooManyPendingDownloadsError, 503)
        # No HEAD: it would use up the single-use key without delivering the file.
        app.router.add_get(
            "/api/download/{guid}/{token}",
            self._handle_download,
            allow_head=False,
            expect_handler=expect_handler,
        )
        app.on_startup.append(self._on_startup)

    async def _on_startup(self, app: web.Application) -> None:
        if self._store is None:
            self._store = app[STORE]

    @property
    def store(self) -> SharedStore:
        if self._store is None:
            raise RuntimeError("FusionDownloadAPI has no store: call setup(app) and start the app")
        return self._store

    # -- API for handlers ------------------------------------------------------
    def check_path(self, filepath: Path | str) -> Path:
        """Resolved ``filepath`` when it is a regular file under a root (symlinks followed)."""
        try:
            resolved = Path(filepath).resolve(strict=True)
        except (OSError, RuntimeError, ValueError) as exc:
            # ValueError: a NUL in the path ("embedded null byte").
            raise DownloadRootError(f"cannot download {filepath}: file not found") from exc
        if not any(resolved.is_relative_to(root) for root in self._roots):
            raise DownloadRootError(f"cannot download {filepath}: not under a download root")
        if not resolved.is_file():
            raise DownloadRootError(f"cannot download {filepath}: not a regular file")
        return resolved

    async def prepare(self, filepath: Path | str, filename: str) -> PendingDownloadKey:
        """Make a one-time key for ``filepath``, downloaded as ``filename``.

        Raises :class:`DownloadRootError` for a file outside the roots,
        :class:`TooManyPendingDownloadsError` when the cap is reached and
        :class:`~fusion.helper.store.StoreUnavailableError` when the store is down.
        """
        resolved = self.check_path(filepath)
        guid = uuid4()
        token = _new_token()
        ttl = self.config.ttl
        added = await self.store.bounded_add(
            _PENDING_SET, str(guid), ttl=ttl, cap=self.config.max_pending
        )
        if not added:
            raise TooManyPendingDownloadsError(
                f"too many pending downloads (at most {self.config.max_pending})", ttl
            )
        pending = _PendingDownload(token=token, filepath=str(resolved), filename=filename)
        await self.store.set(_KEY_PREFIX + str(guid), _ENCODER.encode(pending), ttl=ttl)
        return PendingDownloadKey(guid=guid, token=token)

    async def _take(self, guid: str, token: str) -> _PendingDownload | None:
        key = _KEY_PREFIX + guid
        raw = await self.store.get(key)
        if raw is None:
            return None
        try:
            pending = _DECODER.decode(raw)
        except msgspec.DecodeError:
            return None
        # A wrong token must not burn the key for its holder, so compare before pop.
        if not hmac.compare_digest(pending.token.encode(), token.encode()):
            return None
        # pop is the single-use point: of two concurrent fetches only one gets the value.
        if await self.store.pop(key) != raw:
            return None
        await self.store.bounded_remove(_PENDING_SET, guid)
        return pending

    # -- route -----------------------------------------------------------------
    @operation("A prepared file, once", content_type=OCTET_STREAM, errors=(404,), auth=False)
    async def _handle_download(self, request: web.Request) -> web.StreamResponse:
        guid = str(get_guid(request, "guid"))
        token = request.match_info["token"]
        if not _TOKEN_RE.match(token):
            return error_response(404, "download not found")
        # A store outage propagates: the envelope answers 503.
        pending = await self._take(guid, token)
        if pending is None:
            return error_response(404, "download not found, already used or expired")
        try:
            # Checked again at fetch time: the file may have been swapped for a symlink.
            resolved = self.check_path(pending.filepath)
            size = (await asyncio.to_thread(resolved.stat)).st_size
        except (DownloadRootError, OSError) as exc:
            _LOGGER.warning("download %s: %s", guid, exc)
            return error_response(404, "download not found")
        # A regular file: its size is the Content-Length (clients show a percentage),
        # and exactly that many bytes are sent even if the file grows meanwhile.
        return await stream_response(
            request,
            iter_file(resolved, chunk_size=self.config.chunk_size, end=size),
            pending.filename,
            size=size,
        )
