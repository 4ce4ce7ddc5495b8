"""FusionConstantAPI: the service constant, read from a file and reloaded when it changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Generic, TypeVar

from aiohttp import web

from fusion.concept import ConceptError, Constant
from fusion.helper.http_envelope import FusionHTTPError, json_response
from fusion.server.appkeys import AUTH, CONSTANT
from fusion.server.constant.config import FusionConstantAPIConfig
from fusion.server.openapi import operation
from fusion.server.routing import expect_handler

__all__ = ["FusionConstantAPI"]

_LOGGER = logging.getLogger("fusion.server.constant")

ConstantT = TypeVar("ConstantT", bound=Constant)
# What identifies one version of the file: a change of any of these means reload.
_Signature = tuple[int, int, int, int]
# Seconds between background checks when reload_interval is 0.
_IDLE_RELOAD_INTERVAL = 1.0


class FusionConstantAPI(Generic[ConstantT]):
    """Serves the service's Constant subclass from ``config.path``.

    The file is checked every ``reload_interval`` seconds by a background task
    (and on ``GET /api/constant``, at most that often), with one ``stat``
    (modification time, size, inode, device), and read again only when that
    changed. So :attr:`current`, which a service reads in its own routes, is
    never older than the interval, whether or not anyone calls the route. A
    broken edit keeps the last good constant and logs the error; while no file
    exists the route answers 503 and :attr:`current` is None.
    """

    def __init__(
        self,
        config: FusionConstantAPIConfig,
        constant_type: type[ConstantT] = Constant,  # type: ignore[assignment]
    ) -> None:
        self.config = config
        self.constant_type = constant_type
        self.filepath: Path = config.filepath
        self._constant: ConstantT | None = None
        self._signature: _Signature | None = None
        self._checked = -float("inf")
        self._lock = asyncio.Lock()

    def setup(self, app: web.Application) -> None:
        app[CONSTANT] = self
        app.router.add_get("/api/constant", self.get_constant, expect_handler=expect_handler)
        app.cleanup_ctx.append(self._lifecycle)

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        await self.refresh(force=True)
        refresher = asyncio.create_task(self._refresh_forever())
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher

    async def _refresh_forever(self) -> None:
        # With reload_interval 0 every request checks the file; the service's
        # own readers of ``current`` still get a check every second.
        interval = self.config.reload_interval or _IDLE_RELOAD_INTERVAL
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh(force=True)
            except Exception:
                # A background task: nobody else would see this, and the next
                # check must still run.
                _LOGGER.exception("checking the constant file %s failed", self.filepath)

    @property
    def current(self) -> ConstantT | None:
        """The last good constant, at most ``reload_interval`` seconds old (no I/O)."""
        return self._constant

    def _stat(self) -> _Signature | None:
        try:
            st = os.stat(self.filepath)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    async def refresh(self, *, force: bool = False) -> ConstantT | None:
        """Check the file (at most every ``reload_interval`` seconds) and reload it if changed.

        Returns the constant to serve: None when the file does not exist.
        """
        now = time.monotonic()
        if not force and now - self._checked < self.config.reload_interval:
            return self._constant
        self._checked = now
        signature = self._stat()
        if signature is None:
            if self._constant is not None:
                _LOGGER.warning("constant file %s is gone", self.filepath)
            self._constant = None
            self._signature = None
            return None
        if signature == self._signature:
            return self._constant
        async with self._lock:
            if signature == self._signature:
                return self._constant
            # Remembered even when the edit is broken, so the error is logged
            # once per edit and not at every check.
            self._signature = signature
            try:
                constant = await asyncio.to_thread(self.constant_type.from_filepath, self.filepath)
            except ConceptError as exc:
                if self._constant is None:
                    _LOGGER.error("constant file %s is invalid: %s", self.filepath, exc)
                else:
                    _LOGGER.error(
                        "constant file %s is invalid, keeping the previous constant: %s",
                        self.filepath,
                        exc,
                    )
                return self._constant
            self._constant = constant
            _LOGGER.info("constant loaded from %s", self.filepath)
        return self._constant

    @operation("The service constant", response=Constant, errors=(503,), auth=None)
    async def get_constant(self, request: web.Request) -> web.Response:
        """``GET /api/constant``: the service constant; 503 while the file is missing."""
        if self.config.require_auth:
            await request.app[AUTH].authenticate(request)
        constant = await self.refresh()
        if constant is None:
            raise FusionHTTPError(503, "constant not available")
        return json_response(constant)
