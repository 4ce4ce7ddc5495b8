"""A small real Fusion-protocol server on a loopback socket, for the client unit tests.

It speaks PROTOCOL.md (envelope, session cookie, API key, plain-text 401 like
older servers, downloads with Content-Disposition, an event stream with ids
that can be cut mid-stream) and records what the client sent.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web
from fusion_testing.tls import TLSFiles, make_tls_files

from fusion.concept import Case, Constant, Identity

SESSION_COOKIE = "FUSION_SESSION"
API_KEY = "robot-key-0123456789"
FEDERATION_KEY = "federation-key-0123456789"
PASSWORD = "correct horse"
DOWNLOAD_GUID = "6f1b8a52-1f3b-4a6e-9a51-0d6f0a3c7e11"
DOWNLOAD_TOKEN = "tok_en-AZ09"
HOSTILE_FILENAME = "../..\\\\.bashrc"


class ServiceConstant(Constant, kw_only=True):
    """A service's Constant subclass, to check the client returns it."""

    max_upload: int = 0


class TimelineCase(Case, kw_only=True):
    """A service's Case subclass with a field of its own."""

    priority: str = "low"


@dataclass
class ProtocolState:
    """What the fake server holds and what it saw."""

    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)
    requests: list[web.Request] = field(default_factory=list)
    download_body: bytes = b""
    events: list[dict[str, Any]] = field(default_factory=list)
    # Events sent per connection before the server cuts it (None: keep the stream open).
    cut_after: list[int | None] = field(default_factory=list)
    last_event_ids: list[str | None] = field(default_factory=list)
    event_failures: int = 0  # answer 503 to this many reconnections


STATE_KEY = web.AppKey("state", ProtocolState)


def envelope(data: Any = None, status: int = 200, message: str | None = None) -> web.Response:
    body: dict[str, Any] = {"status": status}
    if data is not None:
        body["data"] = data
        body["count"] = len(data)
    if message is not None:
        body["message"] = message
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json"
    )


def caller(request: web.Request) -> Identity | None:
    state = request.app[STATE_KEY]
    token = request.headers.get("X-Fusion-API-Token")
    if token == API_KEY:
        return Identity(username="robot", groups=frozenset({"robots"}))
    if token == FEDERATION_KEY:
        return Identity(username="hub", groups=frozenset())
    if request.cookies.get(SESSION_COOKIE) in state.sessions:
        return Identity(username="admin", groups=frozenset({"admins"}))
    return None


def require(request: web.Request) -> Identity:
    identity = caller(request)
    if identity is None:
        # Older servers answer 401 as plain text, not with the envelope.
        raise web.HTTPUnauthorized(text="401: Unauthorized")
    return identity


@web.middleware
async def record(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[STATE_KEY].requests.append(request)
    response: web.StreamResponse = await handler(request)
    return response


async def info(request: web.Request) -> web.Response:
    return envelope({"api": "fusion-test", "version": "9.9.9", "extra": "ignored"})


async def constant(request: web.Request) -> web.Response:
    return envelope({"banner": "hello", "allow_empty_acs": False, "max_upload": 42})


async def login(request: web.Request) -> web.Response:
    body = await request.json()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        return envelope(status=400, message="invalid login body")
    if data.get("code") == "good-code" or (
        data.get("username") == "admin" and data.get("password") == PASSWORD
    ):
        token = uuid.uuid4().hex
        request.app[STATE_KEY].sessions.add(token)
        response = envelope({"username": "admin", "groups": ["admins"]})
        response.set_cookie(SESSION_COOKIE, token, httponly=True, path="/")
        return response
    return envelope(status=400, message="login refused")


async def logout(request: web.Request) -> web.Response:
    require(request)
    request.app[STATE_KEY].sessions.discard(request.cookies.get(SESSION_COOKIE, ""))
    return envelope()


async def is_logged(request: web.Request) -> web.Response:
    return envelope(require(request).to_dict())


async def auth_config(request: web.Request) -> web.Response:
    return envelope({"type": "basic", "parameters": {}})


async def identities(request: web.Request) -> web.Response:
    require(request)
    return envelope([{"username": "admin", "groups": ["admins"]}, {"username": "robot"}])


async def list_cases(request: web.Request) -> web.Response:
    require(request)
    return envelope(list(request.app[STATE_KEY].cases.values()))


async def create_case(request: web.Request) -> web.Response:
    require(request)
    body = await request.json()
    try:
        case = TimelineCase.from_dict(body)
    except ValueError as exc:
        return envelope(status=400, message=str(exc))
    request.app[STATE_KEY].cases[str(case.guid)] = case.to_dict()
    return envelope(case.to_dict())


def _case_guid(request: web.Request) -> str:
    try:
        return str(uuid.UUID(request.match_info["case_guid"]))
    except ValueError:
        raise web.HTTPBadRequest(
            text=msgspec.json.encode({"status": 400, "message": "invalid GUID"}).decode(),
            content_type="application/json",
        ) from None


def _stored(request: web.Request) -> dict[str, Any]:
    stored = request.app[STATE_KEY].cases.get(_case_guid(request))
    if stored is None:
        raise web.HTTPNotFound(
            text=msgspec.json.encode({"status": 404, "message": "case not found"}).decode(),
            content_type="application/json",
        )
    return stored


async def get_case(request: web.Request) -> web.Response:
    require(request)
    return envelope(_stored(request))


async def update_case(request: web.Request) -> web.Response:
    require(request)
    case = TimelineCase.from_dict(_stored(request))
    case.update(await request.json())
    request.app[STATE_KEY].cases[str(case.guid)] = case.to_dict()
    return envelope(case.to_dict())


async def delete_case(request: web.Request) -> web.Response:
    require(request)
    _stored(request)
    del request.app[STATE_KEY].cases[_case_guid(request)]
    return envelope()


async def attach_case(request: web.Request) -> web.Response:
    if request.headers.get("X-Fusion-API-Token") != FEDERATION_KEY:
        raise web.HTTPForbidden(text="403: Forbidden")
    stored = _stored(request)
    return envelope({**stored, "managed": True})


async def download(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if (request.match_info["guid"], request.match_info["token"]) != (
        DOWNLOAD_GUID,
        DOWNLOAD_TOKEN,
    ):
        return envelope(status=404, message="unknown or expired download key")
    response = web.StreamResponse(
        headers={
            "Content-Disposition": f'attachment; filename="{HOSTILE_FILENAME}"',
            "Content-Length": str(len(state.download_body)),
        }
    )
    await response.prepare(request)
    for offset in range(0, len(state.download_body), 100_000):
        await response.write(state.download_body[offset : offset + 100_000])
    await response.write_eof()
    return response


async def truncated_download(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": "1000000"})
    await response.prepare(request)
    await response.write(b"x" * 1000)
    assert request.transport is not None
    request.transport.close()
    return response


async def events(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    require(request)
    if _case_guid(request) not in state.cases:
        return envelope(status=404, message="case not found")
    state.last_event_ids.append(request.headers.get("Last-Event-ID"))
    if state.event_failures > 0:
        state.event_failures -= 1
        return envelope(status=503, message="store unavailable")
    cut_after = state.cut_after.pop(0) if state.cut_after else None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    start = int(request.headers.get("Last-Event-ID") or 0)
    await response.write(b"retry: 50\n: keepalive\n\n")
    for sent, (index, event) in enumerate(enumerate(state.events[start:], start=start + 1)):
        if cut_after is not None and sent == cut_after:
            # Drop the connection mid-stream, as a crashed proxy would.
            assert request.transport is not None
            request.transport.close()
            return response
        payload = msgspec.json.encode(event).decode()
        await response.write(f": comment before {index}\nid: {index}\ndata: {payload}\n\n".encode())
    while True:  # stay open like a live stream until the client goes away
        await asyncio.sleep(0.05)
        await response.write(b": keepalive\n\n")


def build_app() -> web.Application:
    app = web.Application(middlewares=[record])
    app[STATE_KEY] = ProtocolState()
    app.router.add_get("/api/info", info)
    app.router.add_get("/api/constant", constant)
    app.router.add_post("/api/auth/login", login)
    app.router.add_get("/api/auth/logout", logout)
    app.router.add_get("/api/auth/is_logged", is_logged)
    app.router.add_get("/api/auth/config", auth_config)
    app.router.add_get("/api/auth/identities", identities)
    app.router.add_get("/api/cases", list_cases)
    app.router.add_post("/api/case", create_case)
    app.router.add_get("/api/case/{case_guid}", get_case)
    app.router.add_put("/api/case/{case_guid}", update_case)
    app.router.add_delete("/api/case/{case_guid}", delete_case)
    app.router.add_put("/api/case/{case_guid}/attach/{next_case_guid}", attach_case)
    app.router.add_get("/api/download/{guid}/{token}", download)
    app.router.add_get("/truncated", truncated_download)
    app.router.add_get("/api/events/case/{case_guid}", events)
    return app


@dataclass
class RunningServer:
    """The running fake server and the secrets it accepts (tests import nothing from here)."""

    url: str
    app: web.Application
    api_key: str = API_KEY
    federation_key: str = FEDERATION_KEY
    password: str = PASSWORD
    download_guid: str = DOWNLOAD_GUID
    download_token: str = DOWNLOAD_TOKEN
    hostile_filename: str = HOSTILE_FILENAME

    @property
    def state(self) -> ProtocolState:
        return self.app[STATE_KEY]


async def start_app(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if ssl_context is not None else "http"
    return runner, f"{scheme}://127.0.0.1:{port}"


@pytest.fixture
async def protocol_server() -> AsyncIterator[RunningServer]:
    app = build_app()
    runner, url = await start_app(app)
    try:
        yield RunningServer(url=url, app=app)
    finally:
        await runner.cleanup()


StartServer = Callable[[ssl.SSLContext | None], Awaitable[RunningServer]]


@pytest.fixture
async def start_protocol_server() -> AsyncIterator[StartServer]:
    """Start more fake servers (TLS ones, say); all are stopped at teardown."""
    runners: list[web.AppRunner] = []

    async def start(ssl_context: ssl.SSLContext | None = None) -> RunningServer:
        app = build_app()
        runner, url = await start_app(app, ssl_context)
        runners.append(runner)
        return RunningServer(url=url, app=app)

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


# -- TLS: a private CA and a server certificate (fusion_testing.tls), once per session --


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))
