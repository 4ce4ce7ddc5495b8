"""FusionInfoAPI: ``GET /api/info``."""

from __future__ import annotations

from aiohttp import web

from fusion.concept import Info
from fusion.helper.http_envelope import json_response
from fusion.server.appkeys import AUTH
from fusion.server.info.config import FusionInfoAPIConfig
from fusion.server.openapi import operation
from fusion.server.routing import expect_handler

__all__ = ["FusionInfoAPI"]


class FusionInfoAPI:
    """Says which API and version a service is."""

    def __init__(self, config: FusionInfoAPIConfig) -> None:
        self.config = config
        self.info = Info(api=config.api, version=config.version)

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/api/info", self.get_info, expect_handler=expect_handler)

    @operation("The service's Info", response=Info, auth=None)
    async def get_info(self, request: web.Request) -> web.Response:
        """``GET /api/info``: the service's Info."""
        if self.config.require_auth:
            await request.app[AUTH].authenticate(request)
        return json_response(self.info)
