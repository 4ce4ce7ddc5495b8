"""Fusion's routes answer an ``Expect`` header in the envelope.

aiohttp runs a route's expect handler before any middleware; its default one
answers values other than ``100-continue`` in plain text, and fails with a 500
when the value is not UTF-8. Every route of Fusion's APIs is added with
:func:`expect_handler` (aiohttp's public ``expect_handler=`` argument), and
so are a service's routes given to ``FusionServer.add_routes``.
"""

from __future__ import annotations

from aiohttp import HttpVersion11, web

from fusion.helper.http_envelope import error_response

__all__ = ["expect_handler", "with_expect_handler"]


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` gets its interim answer; anything else a 417 envelope.

    aiohttp's default answers other values in plain text, before any
    middleware runs, and fails with a 500 when the value is not UTF-8.
    """
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # The interim answer is not part of the response body.
        request.writer.output_size = 0
        return None
    return error_response(417, "unsupported Expect header")


def with_expect_handler(route: web.AbstractRouteDef) -> web.AbstractRouteDef:
    """``route`` (a ``web.get(...)`` and the like) with :func:`expect_handler`,
    unless it names its own."""
    if isinstance(route, web.RouteDef) and "expect_handler" not in route.kwargs:
        kwargs = {**route.kwargs, "expect_handler": expect_handler}
        return web.RouteDef(route.method, route.path, route.handler, kwargs)
    return route
