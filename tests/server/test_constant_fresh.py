"""FusionConstantAPI.current stays fresh for a service's own routes, without GET /api/constant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiohttp import web
from fusion_testing.clock import eventually
from fusion_testing.fixtures_server import HTTPSessionFactory, ServerFactory, call, server_config

from fusion.concept import Constant
from fusion.helper.http_envelope import json_response
from fusion.server import FusionServer
from fusion.server.appkeys import CONSTANT


class BannerConstant(Constant, kw_only=True):
    retention_days: int = 30


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _banner(request: web.Request) -> web.Response:
    # What a service does in a route of its own: read the constant, no file access.
    constant = request.app[CONSTANT].current
    return json_response({"banner": None if constant is None else constant.banner})


@pytest.mark.parametrize("reload_interval", [0.05, 0])
async def test_service_route_sees_the_edited_constant_without_the_constant_route(
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    reload_interval: float,
) -> None:
    constant_file = tmp_path / "constant.yml"
    _write(constant_file, "banner: first\n")
    config = server_config(tmp_path, constant={"reload_interval": reload_interval})
    server = FusionServer(config, constant_type=BannerConstant)
    server.add_routes([web.get("/banner", _banner)])
    running = await fusion_server(server)
    session = http_sessions(running.url)
    assert (await call(session, "GET", "/banner"))[1]["data"] == {"banner": "first"}

    async def banner_is(expected: str | None) -> None:
        async def seen() -> bool:
            return bool((await call(session, "GET", "/banner"))[1]["data"]["banner"] == expected)

        await eventually(seen, f"the service route to see banner {expected!r}")

    # Nobody calls /api/constant: the API's own task notices each change.
    _write(constant_file, "banner: second\n")
    await banner_is("second")
    constant_file.unlink()
    await banner_is(None)
    _write(constant_file, "banner: third\n")
    await banner_is("third")
