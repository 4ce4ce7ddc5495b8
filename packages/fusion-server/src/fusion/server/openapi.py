"""The OpenAPI 3.1 description of an application's routes, at ``GET /api/openapi.json``.

Beyond the protocol (older clients never ask for it). Each route's handler
carries its description, set by the :func:`operation` decorator; the
document is built from the application's router, so every route registered is
in it, described or not. Request bodies and the ``data`` of the envelope get
JSON Schema from the concept Structs (``msgspec.json.schema_components``),
with the service's own Case and Constant subclasses in place of
:class:`~fusion.concept.Case` and :class:`~fusion.concept.Constant`.

The route needs no authentication: it lists routes and shapes, nothing a
caller could not learn from the protocol; it answers the document itself (not
in the envelope), as tools such as Swagger UI expect.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from fusion.concept import Case, Constant, Event
from fusion.server.appkeys import AUTH, CASE_API, CONFIG, CONSTANT
from fusion.server.routing import expect_handler

__all__ = [
    "EVENT_STREAM",
    "JSON",
    "MULTIPART",
    "OCTET_STREAM",
    "OPENAPI_PATH",
    "LoginBody",
    "Operation",
    "build_openapi",
    "operation",
    "operation_of",
    "serves_openapi",
    "setup_openapi",
]

JSON = "application/json"
"""Content type of the envelope."""
EVENT_STREAM = "text/event-stream"
"""Content type of an event stream."""
OCTET_STREAM = "application/octet-stream"
"""Content type of a file (a download)."""
MULTIPART = "multipart/form-data"
"""Content type of an upload's body."""
OPENAPI_PATH = "/api/openapi.json"
"""Where :func:`setup_openapi` serves the document."""

_ATTRIBUTE = "__fusion_operation__"
_REF_TEMPLATE = "#/components/schemas/{name}"
_ERROR_ENVELOPE = "ErrorEnvelope"
_HandlerT = TypeVar("_HandlerT", bound=Callable[..., Any])


class LoginBody(msgspec.Struct, kw_only=True):
    """``POST /api/auth/login``'s body: the backend's fields under ``data``.

    Basic and LDAP: ``{"username", "password"}``; OIDC: ``{"code"}``.
    """

    data: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Operation:
    """What one route takes and answers, for the document.

    ``request`` is the type of the JSON body (None: no body); ``response`` the
    type of the envelope's ``data`` (None: ``{"status": 200}`` only), or of
    nothing when ``content_type`` is not JSON (a stream or a file).
    ``errors`` are other statuses the route answers on purpose, each in the
    error envelope: 401 and 403 are implied by ``auth`` (401 by None too), 400 and 413 by
    ``request`` (and 415, an unknown Content-Encoding), 400 and 404 by a path
    parameter. ``upload``: the body is
    ``multipart/form-data``, a ``file`` part and ``request``'s fields as text
    parts. ``enveloped`` False: the JSON answer is ``response`` itself. ``auth``:
    True when a caller must be authenticated, False when nobody needs to be,
    None when the configuration decides.
    """

    summary: str
    request: Any = None
    response: Any = None
    errors: tuple[int, ...] = ()
    auth: bool | None = True
    content_type: str = JSON
    upload: bool = False
    enveloped: bool = True


def operation(
    summary: str,
    *,
    request: Any = None,
    response: Any = None,
    errors: tuple[int, ...] = (),
    auth: bool | None = True,
    content_type: str = JSON,
    upload: bool = False,
    enveloped: bool = True,
) -> Callable[[_HandlerT], _HandlerT]:
    """Decorate a route handler with its :class:`Operation` (see there).

    ``@operation("A sample's download key", response=PendingDownloadKey, errors=(404,))``
    above ``async def download(self, request)``: the route's method and path
    come from where the handler is routed.
    """
    described = Operation(
        summary=summary,
        request=request,
        response=response,
        errors=errors,
        auth=auth,
        content_type=content_type,
        upload=upload,
        enveloped=enveloped,
    )

    def decorate(handler: _HandlerT) -> _HandlerT:
        setattr(handler, _ATTRIBUTE, described)
        return handler

    return decorate


def operation_of(handler: Any) -> Operation | None:
    """The :class:`Operation` a handler was decorated with (bound methods too), or None."""
    found = getattr(handler, _ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None


def _substitute(tp: Any, replacements: Mapping[Any, Any]) -> Any:
    """``tp`` with the service's subclasses in place of the framework's (``list[Case]`` too)."""
    if tp in replacements:
        return replacements[tp]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is None or not args:
        return tp
    replaced = tuple(_substitute(arg, replacements) for arg in args)
    if replaced == args:
        return tp
    if origin in (typing.Union, types.UnionType):
        return typing.Union[replaced]  # noqa: UP007  # built from a tuple
    return origin[replaced]


def _replacements(app: web.Application) -> dict[Any, Any]:
    replacements: dict[Any, Any] = {}
    case_api = app.get(CASE_API)
    if case_api is not None:
        replacements[Case] = case_api.case_type
    constant_api = app.get(CONSTANT)
    if constant_api is not None:
        replacements[Constant] = constant_api.constant_type
    return replacements


# A route without @operation: any envelope (data or not), any usual error status.
_UNDESCRIBED = Operation(
    summary="(not described)", auth=None, errors=(400, 403, 404, 409, 412, 413, 415, 429)
)


def _envelope(data: dict[str, Any] | None, *, described: bool = True) -> dict[str, Any]:
    properties: dict[str, Any] = {"status": {"const": 200}, "message": {"type": "string"}}
    required = ["status"]
    if not described:
        properties["data"] = {}
        properties["count"] = {"type": "integer", "minimum": 0}
    elif data is not None:
        properties["data"] = data
        properties["count"] = {"type": "integer", "minimum": 0}
        required += ["data", "count"]
    return {"type": "object", "properties": properties, "required": required}


def _security(auth: bool | None) -> list[dict[str, list[str]]]:
    schemes: list[dict[str, list[str]]] = [{"session": []}, {"apiKey": []}, {"bearer": []}]
    if auth is None:
        return [{}, *schemes]  # {}: no credentials may do, as configured
    return schemes if auth else []


def _error(status: int) -> dict[str, Any]:
    return {
        "description": f"error {status}, in the error envelope",
        "content": {JSON: {"schema": {"$ref": _REF_TEMPLATE.format(name=_ERROR_ENVELOPE)}}},
    }


def _path_parameters(template: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{([^}:]+)", template)
    ]


def _content(
    described: Operation, schema: dict[str, Any] | None, event: dict[str, Any]
) -> dict[str, Any]:
    content_type = described.content_type
    if content_type == EVENT_STREAM:
        body: dict[str, Any] = {
            "type": "string",
            "description": "Events as `data: <Event JSON>` lines, with `id:` lines and"
            " `: keepalive` comments (PROTOCOL.md, Events)",
            "x-fusion-event": event,
        }
    elif content_type == JSON:
        if not described.enveloped:
            body = schema or {}
        else:
            body = _envelope(schema, described=described is not _UNDESCRIBED)
    else:
        body = {"type": "string", "contentMediaType": content_type}
    return {content_type: {"schema": body}}


def _request_body(described: Operation, schema: dict[str, Any]) -> dict[str, Any]:
    if not described.upload:
        return {"required": True, "content": {JSON: {"schema": schema}}}
    file_part = {
        "type": "object",
        "properties": {"file": {"type": "string", "contentMediaType": OCTET_STREAM}},
        "required": ["file"],
    }
    return {"required": True, "content": {MULTIPART: {"schema": {"allOf": [schema, file_part]}}}}


def build_openapi(app: web.Application, *, title: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in ``app``'s router.

    Routes whose handler has no :func:`operation` are listed too, with a
    response of any envelope (``data`` or not) and the usual 4xx, so the
    document never misses a route.
    ``title`` defaults to the Info API's ``api`` (else ``fusion``).
    """
    replacements = _replacements(app)
    config = app.get(CONFIG)
    info = config.info if config is not None else None
    routes: list[tuple[str, str, Operation]] = []
    for route in app.router.routes():
        template = route.resource.canonical if route.resource is not None else None
        if template is None or route.method == "*":
            continue
        described = operation_of(route.handler)
        if described is None:
            described = _UNDESCRIBED
        routes.append((route.method.lower(), template, described))
    # One call for every type: shared Structs become one component each.
    bodies = [
        _substitute(tp, replacements)
        for _method, _template, described in routes
        for tp in (described.request, described.response)
        if tp is not None
    ]
    event_type = typing.cast(Any, Event)[replacements.get(Case, Case)]  # a runtime type
    schemas, components = msgspec.json.schema_components(
        [*bodies, event_type], ref_template=_REF_TEMPLATE
    )
    components[_ERROR_ENVELOPE] = {
        "type": "object",
        "properties": {
            "status": {"type": "integer", "minimum": 400},
            "message": {"type": "string"},
        },
        "required": ["status", "message"],
    }
    paths: dict[str, dict[str, Any]] = {}
    position = 0
    for method, template, described in routes:
        request_schema = response_schema = None
        if described.request is not None:
            request_schema = schemas[position]
            position += 1
        if described.response is not None:
            response_schema = schemas[position]
            position += 1
        success: dict[str, Any] = {"description": described.summary}
        if method != "head":
            success["content"] = _content(described, response_schema, schemas[-1])
        responses: dict[str, Any] = {"200": success}
        parameters = _path_parameters(template)
        errors = set(described.errors)
        if described.auth is not False:
            errors.add(401)  # auth None: when the configuration requires it
        if described.auth:
            errors.add(403)
        if described.request is not None:
            errors.update((400, 413, 415))  # 415: a Content-Encoding it cannot decode
        if parameters:
            errors.update((400, 404))
        for status in sorted(errors):
            responses[str(status)] = _error(status)
        responses["default"] = _error(500) | {"description": "other errors, in the envelope"}
        entry: dict[str, Any] = {
            "operationId": f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', template).strip('_')}",
            "summary": described.summary,
            "security": _security(described.auth),
            "responses": responses,
        }
        if parameters:
            entry["parameters"] = parameters
        if request_schema is not None:
            entry["requestBody"] = _request_body(described, request_schema)
        paths.setdefault(template, {})[method] = entry
    auth_api = app.get(AUTH)
    session_cookie = auth_api.config.session.cookie_name if auth_api else "FUSION_SESSION"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title or (info.api if info is not None else "fusion"),
            "version": info.version if info is not None else "0",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": session_cookie},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Fusion-API-Token"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }


# Filled on first use (the router is frozen by then); a list: the app's own
# state may not change once it runs.
_DOCUMENT: web.AppKey[list[bytes]] = web.AppKey("fusion_openapi_document", list)


@operation("This OpenAPI 3.1 document", response=dict[str, Any], auth=False, enveloped=False)
async def _get_openapi(request: web.Request) -> web.Response:
    cache = request.app[_DOCUMENT]
    if not cache:
        cache.append(msgspec.json.encode(build_openapi(request.app)))
    return web.Response(body=cache[0], content_type=JSON)


def serves_openapi(app: web.Application) -> bool:
    """Whether :func:`setup_openapi` was called on ``app``."""
    return _DOCUMENT in app


def setup_openapi(app: web.Application) -> None:
    """Serve :func:`build_openapi`'s document at :data:`OPENAPI_PATH` (no authentication)."""
    app[_DOCUMENT] = []
    app.router.add_get(OPENAPI_PATH, _get_openapi, expect_handler=expect_handler)
