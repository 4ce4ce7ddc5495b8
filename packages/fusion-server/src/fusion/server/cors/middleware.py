"""CORS as a middleware (preflights) and a response hook (the other answers).

Not aiohttp-cors: that library enables CORS route by route once every route
exists (routes a service adds later, sub-applications and the router's own
404/405 answers get no headers), refuses resources that already have an
OPTIONS or ``*`` route, and sends no ``Vary: Origin``, which a cache in front
of the server needs so it never hands one origin's answer to another. The
policy here is one for the whole server, which is what the configuration
says, in a few lines.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from aiohttp import hdrs, web

from fusion.helper.http_envelope import Handler, error_response
from fusion.server.cors.config import FusionCORSConfig

__all__ = ["setup_cors"]


class _CORSPolicy:
    def __init__(self, config: FusionCORSConfig) -> None:
        self.config = config
        self.any_origin = "*" in config.allow_origins
        self.origins = frozenset(config.allow_origins)
        self.methods = frozenset(config.allow_methods)
        self.headers = frozenset(header.lower() for header in config.allow_headers)
        self.preflight_headers: dict[str, str] = {
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(config.allow_methods),
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ", ".join(config.allow_headers),
            hdrs.ACCESS_CONTROL_MAX_AGE: str(config.max_age),
        }
        self.expose = ", ".join(config.expose_headers)

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.lower() in self.origins

    def refusal(self, request: web.Request, origin: str) -> str | None:
        """Why a preflight is refused, None when it is allowed."""
        if not self.allows(origin):
            return "CORS: origin not allowed"
        method = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD, "")
        if method.upper() not in self.methods:
            return "CORS: method not allowed"
        asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
        for header in asked.split(","):
            name = header.strip().lower()
            if name and name not in self.headers:
                return "CORS: request header not allowed"
        return None

    def allow_origin(self, target: MutableMapping[str, str], origin: str) -> None:
        if self.any_origin and not self.config.allow_credentials:
            target[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*"
        else:
            target[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        if self.config.allow_credentials:
            target[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"

    @web.middleware
    async def answer_preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if (
            request.method != hdrs.METH_OPTIONS
            or origin is None
            or hdrs.ACCESS_CONTROL_REQUEST_METHOD not in request.headers
        ):
            return await handler(request)
        # Answered here, before the routes: a preflight carries no credentials,
        # and the route it asks about need not accept OPTIONS.
        refusal = self.refusal(request, origin)
        if refusal is not None:
            return error_response(403, refusal)
        headers = self.preflight_headers.copy()
        self.allow_origin(headers, origin)
        return web.Response(status=204, headers=headers)

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare: streamed answers (events, downloads) get them too."""
        if not self.any_origin:
            _vary_origin(response)
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or not self.allows(origin):
            return
        if request.method == hdrs.METH_OPTIONS and (
            hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
        ):
            return  # a preflight: answered (or refused) by the middleware
        self.allow_origin(response.headers, origin)
        if self.expose:
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = self.expose


def _vary_origin(response: web.StreamResponse) -> None:
    vary = response.headers.get(hdrs.VARY)
    if vary is None:
        response.headers[hdrs.VARY] = "Origin"
    elif "origin" not in vary.lower():
        response.headers[hdrs.VARY] = f"{vary}, Origin"


def setup_cors(app: web.Application, config: FusionCORSConfig) -> None:
    """Answer CORS preflights and add CORS headers to ``app``'s answers, as ``config`` says.

    Call before the application starts; the middleware goes first, so
    preflights are answered before any other middleware (authentication of a
    service's own, the envelope) sees them.
    """
    policy = _CORSPolicy(config)
    app.middlewares.insert(0, policy.answer_preflight)
    app.on_response_prepare.append(policy.add_headers)
