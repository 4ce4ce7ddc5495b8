"""FusionHealthAPI: ``GET /api/health`` (live) and ``GET /api/ready`` (ready).

Beyond the protocol, both without authentication. ``/api/health`` answers
``{"status": 200}`` while the process serves requests. ``/api/ready`` checks,
concurrently and each within ``check_timeout`` seconds, that the shared store
answers a ping, that the storage is open and writable
(:meth:`FusionStorage.ready`) and that the auth backend can serve logins
(:meth:`FusionAuthBackend.ready`), and answers ``data`` ``{"shared_store":
"ok", "storage": "ok", "auth": "ok"}`` (``auth`` only when a backend is
configured), or 503 with each failed check ``"down"`` or ``"timeout"`` and a
message naming them. The reasons (which may name hosts or paths) go to the
log only, once when a check goes down and once when it is back.

Concurrent readiness requests share one run of the checks, so a flood of
probes costs the store, the storage and the directory one check at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from fusion.helper.http_envelope import json_response
from fusion.server.appkeys import AUTH, STORAGE, STORE
from fusion.server.health.config import FusionHealthConfig
from fusion.server.openapi import operation
from fusion.server.routing import expect_handler

__all__ = ["READY_CHECKS", "FusionHealthAPI"]

_LOGGER = logging.getLogger("fusion.server.health")

READY_CHECKS: Final = ("shared_store", "storage", "auth")
"""The names of the readiness checks, as ``GET /api/ready`` reports them."""


class FusionHealthAPI:
    """Tells a load balancer or an orchestrator whether this replica lives and may serve."""

    def __init__(self, config: FusionHealthConfig) -> None:
        self.config = config
        self._running: asyncio.Future[dict[str, str]] | None = None
        self._down: set[str] = set()

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/api/health", self.get_health, expect_handler=expect_handler)
        app.router.add_get("/api/ready", self.get_ready, expect_handler=expect_handler)

    @operation("Liveness: 200 while the process answers", auth=False)
    async def get_health(self, request: web.Request) -> web.Response:
        """``GET /api/health``: 200 while the process answers."""
        return json_response()

    @operation(
        "Readiness: each check's state; 503 naming the failed ones",
        response=dict[str, str],
        auth=False,
        errors=(503,),
    )
    async def get_ready(self, request: web.Request) -> web.Response:
        """``GET /api/ready``: 200 when every check passes, else 503 naming the failed ones."""
        checks = await self.readiness(request.app)
        down = [name for name, state in checks.items() if state != "ok"]
        if down:
            return json_response(checks, 503, f"not ready: {', '.join(down)}")
        return json_response(checks)

    async def readiness(self, app: web.Application) -> dict[str, str]:
        """Each check's state (``ok``, ``down`` or ``timeout``); one run for concurrent callers."""
        running = self._running
        if running is None:
            running = self._running = asyncio.ensure_future(self._check_all(app))
            running.add_done_callback(self._forget)
        # Shielded: a caller that goes away does not cancel the others' run.
        return await asyncio.shield(running)

    def _forget(self, done: asyncio.Future[dict[str, str]]) -> None:
        if self._running is done:
            self._running = None

    async def _check_all(self, app: web.Application) -> dict[str, str]:
        checks: dict[str, Callable[[], Awaitable[None]]] = {
            "shared_store": app[STORE].ping,
            "storage": app[STORAGE].ready,
        }
        auth = app.get(AUTH)
        if auth is not None and auth.backend is not None:
            checks["auth"] = auth.backend.ready
        states = await asyncio.gather(*(self._check(name, ready) for name, ready in checks.items()))
        return dict(zip(checks, states, strict=True))

    async def _check(self, name: str, ready: Callable[[], Awaitable[None]]) -> str:
        try:
            await asyncio.wait_for(ready(), self.config.check_timeout)
        except TimeoutError:
            return self._failed(name, "timeout", f"no answer within {self.config.check_timeout} s")
        except Exception as exc:
            return self._failed(name, "down", f"{type(exc).__name__}: {exc}")
        if name in self._down:
            self._down.discard(name)
            _LOGGER.info("ready again: %s", name)
        return "ok"

    def _failed(self, name: str, state: str, reason: str) -> str:
        if name not in self._down:
            self._down.add(name)
            _LOGGER.warning("not ready: %s %s: %s", name, state, reason)
        return state
