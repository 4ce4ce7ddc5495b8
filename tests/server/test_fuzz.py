"""Bad input at every route of PROTOCOL.md: only envelope answers, never a 500, storage unchanged.

One real server (every API of the protocol, events and downloads included)
runs for the whole module in a thread of its own, on a loopback socket, and
hypothesis throws requests at it through a raw HTTP/1.1 client (so bodies,
paths and header bytes are exactly what the test says, with or without
Content-Length). After each request the cases are enumerated with the
federation key: they must be what they were unless the request succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import (
    FEDERATION_KEY,
    ROBOT_KEY,
    TEST_USERS,
    server_config,
)
from fusion_testing.redis import RedisServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion.helper.http_envelope import json_response
from fusion.server.app import FusionServer
from fusion.server.download.api import DOWNLOADS
from fusion.server.upload import receive_upload

MAX_BODY = 16 * 1024
# About 3 ms per example (the request and two enumerations): the module runs in ~15 s.
# FUSION_FUZZ_EXAMPLES=5000 digs deeper (a nightly job, a hunt after a change).
EXAMPLES = int(os.environ.get("FUSION_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# --------------------------------------------------------------------------
# the server, in a thread of its own for the whole module
# --------------------------------------------------------------------------


class ErrorLogs(logging.Handler):
    """Records at ERROR and above (the envelope middleware logs every 500 there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class DisconnectLogs(logging.Handler):
    """The envelope middleware's DEBUG line for a client that closed mid-body."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("client closed the connection"):
            self.count += 1


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    streaming: bool = False
    cases_after: dict[str, Any] = field(default_factory=dict)
    """The cases right after the request (before the fixtures were restored)."""

    @property
    def content_type(self) -> str:
        return self.headers.get_content_type()

    def envelope(self) -> Any:
        return msgspec.json.decode(self.body)


@dataclass
class Target:
    """The running server and the fixtures the fuzzers aim at."""

    port: int
    loop: asyncio.AbstractEventLoop
    app: web.Application
    open_case: str = ""
    shared_case: str = ""
    private_case: str = ""
    download_guid: str = ""
    download_token: str = ""
    session_cookie: str = ""
    uploads: Path = Path()
    errors: ErrorLogs = field(default_factory=ErrorLogs)
    disconnects: DisconnectLogs = field(default_factory=DisconnectLogs)

    def run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=30)

    # -- a raw HTTP/1.1 client ------------------------------------------------
    def request(
        self,
        method: str,
        target: bytes | str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes | None = None,
        chunked: bool = False,
        content_length: int | None = None,
    ) -> Answer:
        if isinstance(target, str):
            target = target.encode()
        lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
        lines.append(b"Connection: close")
        for name, value in headers or []:
            lines.append(name + b": " + value)
        payload = b""
        if body is not None:
            if chunked:
                lines.append(b"Transfer-Encoding: chunked")
                for start in range(0, len(body), 4096):
                    chunk = body[start : start + 4096]
                    payload += b"%x\r\n%s\r\n" % (len(chunk), chunk)
                payload += b"0\r\n\r\n"
            else:
                length = len(body) if content_length is None else content_length
                lines.append(b"Content-Length: %d" % length)
                payload = body
        raw = b"\r\n".join(lines) + b"\r\n\r\n" + payload
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as sock:
            # Refused before the whole body was read: the answer is still waiting.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(raw)
            response = http.client.HTTPResponse(sock, method=method)
            response.begin()
            if response.headers.get_content_type() == "text/event-stream":
                return Answer(response.status, response.headers, b"", streaming=True)
            return Answer(response.status, response.headers, response.read())

    def abort(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], sent: bytes
    ) -> None:
        """Send a request whose body stops after ``sent``, then close the connection."""
        lines = [method.encode() + b" " + target.encode() + b" HTTP/1.1", b"Host: 127.0.0.1"]
        lines += [name + b": " + value for name, value in headers]
        lines.append(b"Content-Length: %d" % (len(sent) + 1000))
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as sock:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + sent)

    def cases(self) -> dict[str, Any]:
        answer = self.request("GET", "/api/cases", headers=[(b"X-Fusion-API-Token", FED)])
        assert answer.status == 200, answer.body
        return {case["guid"]: case for case in answer.envelope()["data"]}

    def create(self, key: bytes, **fields: Any) -> str:
        answer = self.request(
            "POST",
            "/api/case",
            headers=[(b"X-Fusion-API-Token", key), (b"Content-Type", b"application/json")],
            body=json.dumps(fields).encode(),
        )
        assert answer.status == 200, answer.body
        guid: str = answer.envelope()["data"]["guid"]
        return guid

    def login(self) -> str:
        username = "alice"
        body = json.dumps({"data": {"username": username, "password": TEST_USERS[username][0]}})
        answer = self.request(
            "POST",
            "/api/auth/login",
            headers=[(b"Content-Type", b"application/json")],
            body=body.encode(),
        )
        assert answer.status == 200, answer.body
        cookie = answer.headers["Set-Cookie"].split(";")[0]
        return cookie.split("=", 1)[1]

    def restore(self) -> None:
        """Put back the fixture cases and the session a successful request changed."""
        present = self.cases()
        for name, fields in FIXTURE_CASES.items():
            guid = getattr(self, name)
            case = present.get(guid)
            if case is None:
                self.create(ROBOT, guid=guid, **fields)
                continue
            expected = {"closed": None, "webhooks": [], **FIXTURE_DEFAULTS, **fields}
            if any(case[key] != value for key, value in expected.items()):
                answer = self.request(
                    "PUT",
                    f"/api/case/{guid}",
                    headers=[(b"X-Fusion-API-Token", FED)],
                    body=json.dumps(expected).encode(),
                )
                assert answer.status == 200, answer.body
        answer = self.request(
            "GET", "/api/auth/is_logged", headers=[(b"Cookie", self.cookie_header)]
        )
        if answer.status != 200:
            self.session_cookie = self.login()

    @property
    def cookie_header(self) -> bytes:
        return b"FUSION_SESSION=" + self.session_cookie.encode()


FED = FEDERATION_KEY.encode()
ROBOT = ROBOT_KEY.encode()
FIXTURE_DEFAULTS: dict[str, Any] = {"acs": [], "acs_ro": [], "tsid": None, "description": ""}
FIXTURE_CASES: dict[str, dict[str, Any]] = {
    "open_case": {"name": "open"},
    "shared_case": {"name": "shared", "acs": ["analysts", "robots"]},
    "private_case": {"name": "private", "acs": ["robots"], "acs_ro": ["readers"]},
}


@pytest.fixture(scope="module", params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """The server on memory://, then on a real redis-server (flushed first)."""
    store_url = "memory://"
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        if not redis.running:
            redis.start()
        redis.flushall()
        store_url = redis.url
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    (data_dir / "constant.yml").write_text("banner: fuzzing\n")
    downloads = data_dir / "downloads"
    downloads.mkdir()
    (downloads / "report.txt").write_bytes(b"the report\n")
    config = server_config(
        data_dir,
        # A body that stops coming is answered (408) within body_timeout.
        server={"max_body_size": MAX_BODY, "body_timeout": 5},
        shared_store={"url": store_url},
        # Every route of PROTOCOL.md, events and downloads included, by the builder.
        event={"source": "fuzz", "keepalive": 1.0},
        download={"roots": [str(downloads)], "ttl": 3600},
        auth={
            "throttle": {
                "window": 60,
                "max_failures_per_username": 10**6,
                "max_failures_per_ip": 10**6,
            }
        },
    )
    server = FusionServer(config)
    uploads = data_dir / "uploads"

    async def upload(request: web.Request) -> web.Response:
        uploaded = await receive_upload(request, uploads, max_size=MAX_BODY)
        return json_response({"name": uploaded.path.name})

    server.add_routes([web.post("/upload", upload)])
    app = server.build()
    loop = asyncio.new_event_loop()
    started: Future[tuple[web.AppRunner, int]] = Future()

    async def start() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        return runner, port

    async def shutdown(runner: web.AppRunner) -> None:
        await runner.cleanup()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.set_result(loop.run_until_complete(start()))
        except BaseException as exc:
            started.set_exception(exc)
            return
        loop.run_forever()

    thread = threading.Thread(target=serve, name="fuzz-server", daemon=True)
    thread.start()
    runner, port = started.result(timeout=30)
    errors = ErrorLogs()
    logging.getLogger().addHandler(errors)
    disconnects = DisconnectLogs()
    envelope_logger = logging.getLogger("fusion.helper.aiohttp")
    envelope_level = envelope_logger.level
    envelope_logger.setLevel(logging.DEBUG)
    envelope_logger.addHandler(disconnects)
    try:
        fuzz = Target(
            port=port,
            loop=loop,
            app=app,
            uploads=uploads,
            errors=errors,
            disconnects=disconnects,
        )
        for name, fields in FIXTURE_CASES.items():
            setattr(fuzz, name, fuzz.create(ROBOT, **fields))
        key = fuzz.run(app[DOWNLOADS].prepare(downloads / "report.txt", "report.txt"))
        fuzz.download_guid, fuzz.download_token = str(key.guid), key.token
        fuzz.session_cookie = fuzz.login()
        yield fuzz
        # A wrong token never burnt the key: its holder still gets the file, once.
        answer = fuzz.request("GET", f"/api/download/{key.guid}/{key.token}")
        assert (answer.status, answer.body) == (200, b"the report\n")
        assert fuzz.request("GET", f"/api/download/{key.guid}/{key.token}").status == 404
    finally:
        logging.getLogger().removeHandler(errors)
        envelope_logger.removeHandler(disconnects)
        envelope_logger.setLevel(envelope_level)
        asyncio.run_coroutine_threadsafe(shutdown(runner), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


# --------------------------------------------------------------------------
# what every answer must look like
# --------------------------------------------------------------------------


def check_answer(answer: Answer, allowed: set[int]) -> None:
    """An envelope whose status is the HTTP status, in ``allowed``; never a 5xx."""
    assert answer.status < 500, (answer.status, answer.body)
    assert answer.status in allowed, (answer.status, answer.body)
    if answer.streaming or answer.content_type not in ("application/json",):
        # Only a successful download (file bytes) or event stream is not JSON.
        assert answer.status == 200, (answer.status, answer.content_type, answer.body)
        return
    envelope = answer.envelope()
    assert isinstance(envelope, dict), envelope
    assert envelope["status"] == answer.status, envelope
    if answer.status >= 400:
        assert isinstance(envelope.get("message"), str), envelope
        assert envelope["message"], envelope
        assert "data" not in envelope, envelope
        assert "Traceback" not in envelope["message"], envelope
    elif "data" in envelope:
        assert envelope["count"] == len(envelope["data"]), envelope


def exchange(
    fuzz: Target,
    method: str,
    path: bytes | str,
    allowed: set[int],
    *,
    may_change: bool | Callable[[Answer], bool] = False,
    **kwargs: Any,
) -> Answer:
    """Send one request, check its answer and that storage changed only if it succeeded."""
    before = fuzz.cases()
    fuzz.errors.records.clear()
    answer = fuzz.request(method, path, **kwargs)
    check_answer(answer, allowed)
    after = answer.cases_after = fuzz.cases()
    changed = may_change(answer) if callable(may_change) else may_change
    if not (changed and answer.status == 200):
        assert after == before, (method, path, answer.status, answer.body)
    fuzz.restore()
    assert fuzz.errors.records == [], [r.getMessage() for r in fuzz.errors.records]
    return answer


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------

# method, path template, reads a JSON body, may change storage
ROUTES: list[tuple[str, str, bool, bool]] = [
    ("GET", "/api/info", False, False),
    ("GET", "/api/constant", False, False),
    ("POST", "/api/auth/login", True, False),
    ("GET", "/api/auth/logout", False, False),
    ("GET", "/api/auth/is_logged", False, False),
    ("GET", "/api/auth/config", False, False),
    ("GET", "/api/auth/identities", False, False),
    ("GET", "/api/cases", False, False),
    ("POST", "/api/case", True, True),
    ("GET", "/api/case/{guid}", False, False),
    ("PUT", "/api/case/{guid}", True, True),
    ("DELETE", "/api/case/{guid}", False, True),
    ("PUT", "/api/case/{guid}/attach/{next}", False, True),
    ("GET", "/api/download/{dguid}/{token}", False, False),
    ("GET", "/api/events/case/{guid}", False, False),
]
GUID_ROUTES = [route for route in ROUTES if "{guid}" in route[1] or "{dguid}" in route[1]]
BODY_ROUTES = [route for route in ROUTES if route[2]]

header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\t\xe9"),
    max_size=300,
).map(lambda text: text.strip().encode("latin-1"))
odd_bytes = st.binary(max_size=200).map(
    lambda raw: bytes(b for b in raw if (b >= 0x20 and b != 0x7F) or b == 0x09).strip()
)
garbage_value = (
    header_text
    | odd_bytes
    | st.sampled_from(
        [b"", b"=", b";;;", b"a=b=c", b'"quoted"', b"x" * 8000, b"\xff\xfe", b"%00", b"null"]
    )
)


@st.composite
def credentials(draw: st.DrawFn, fuzz: Target) -> list[tuple[bytes, bytes]]:
    """Valid, missing, garbage and conflicting credentials."""
    choice = draw(
        st.sampled_from(
            [
                "none",
                "robot",
                "federation",
                "session",
                "cookie",
                "token",
                "bearer",
                "authorization",
                "session+token",
                "robot+bearer",
            ]
        )
    )
    headers: list[tuple[bytes, bytes]] = []
    if "robot" in choice:
        headers.append((b"X-Fusion-API-Token", ROBOT))
    if choice == "federation":
        headers.append((b"X-Fusion-API-Token", FED))
    if "session" in choice:
        headers.append((b"Cookie", fuzz.cookie_header))
    if choice == "cookie":
        name = draw(st.sampled_from([b"FUSION_SESSION", b"fusion_session", b"", b"x"]))
        headers.append((b"Cookie", name + b"=" + draw(garbage_value)))
    if "token" in choice:
        headers.append((b"X-Fusion-API-Token", draw(garbage_value)))
    if "bearer" in choice:
        headers.append((b"Authorization", b"Bearer " + draw(garbage_value)))
    if choice == "authorization":
        headers.append((b"Authorization", draw(garbage_value)))
    return headers


content_types = st.sampled_from(
    [
        None,
        b"application/json",
        b"application/json; charset=utf-8",
        b"application/json; charset=latin-1",
        b"application/json; charset=",
        b"application/vnd.fusion+json",
        b"text/plain",
        b"multipart/form-data; boundary=x",
        b"application/x-www-form-urlencoded",
        b";;;",
        b'application/json; charset="utf-8"; q=\xff',
        b"*/*",
    ]
)
odd_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [
                b"Last-Event-ID",
                b"X-Forwarded-For",
                b"Forwarded",
                b"Accept",
                b"Accept-Encoding",
                b"Range",
                b"If-None-Match",
                b"Origin",
                b"User-Agent",
                b"Expect",
                b"X-Junk",
            ]
        ),
        garbage_value,
    ),
    max_size=3,
    # aiohttp's parser answers a repeated User-Agent (and the like) itself: plain text.
    unique_by=lambda header: header[0],
)

query_strings = st.sampled_from(["", "?", "?a=1&a=2", "?%ff=%00", "?x=" + "y" * 3000]) | st.text(
    alphabet="abc=&%;+/?#0123456789", max_size=30
).map(lambda text: "?" + text.replace("#", "%23"))

# Malformed JSON documents (and valid JSON of the wrong shape).
malformed_json = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b" ",
            b"{",
            b"}",
            b"[",
            b"null",
            b"0",
            b"-",
            b'"string"',
            b"[1, 2",
            b'{"data":',
            b'{"data": {"username": "alice", "password": }}',
            b"{'single': 'quotes'}",
            b'{"a": NaN}',
            b'{"a": Infinity}',
            b'{"a": 1e99999}',
            b'{"a": 123456789012345678901234567890123456789}',
            b"\xef\xbb\xbf{}",
            b"\xef\xbb\xbf",
            b"\xff\xfe{\x00}\x00",
            b'{"name": "\xff"}',
            b'{"name": "\\ud800"}',
            b'{"name": "\\udfff\\ud800"}',
            b'{"name": "nul \\u0000 inside"}',
            b'{"name": "a"} trailing',
            b'{"name": "a",}',
            b'{"name": "a", "name": 5}',
        ]
    ),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=12,
    ).map(lambda value: json.dumps(value).encode()),
)

json_scalar = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
nested_garbage = st.recursive(
    json_scalar,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
garbage_containers = st.lists(nested_garbage, max_size=3) | st.dictionaries(
    st.text(max_size=8), nested_garbage, max_size=3
)
numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
not_str_or_null = st.booleans() | numbers | garbage_containers
not_str = st.none() | not_str_or_null
not_datetime_text = st.sampled_from(
    [
        "",
        "now",
        "yesterday",
        "2026-13-45T00:00:00+00:00",
        "2026-11-28T25:00:00+00:00",
        "2026-11-28T04:00:00",  # naive: refused
        "2026-11-28",
        "28/11/2026 04:00",
        "2026-11-28T04:00:00+99:00",
        "0000-00-00T00:00:00Z",
    ]
) | st.text(alphabet="abcxyz ", max_size=12)
bad_str_list = (
    st.booleans()
    | numbers
    | st.text(max_size=10)
    | st.dictionaries(st.text(max_size=8), nested_garbage, max_size=3)
    | st.lists(not_str, min_size=1, max_size=3)
    | st.lists(st.text(max_size=5), max_size=2).map(lambda items: [*items, None])
)
# Wrong JSON types (or impossible values) for every Case field.
WRONG_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "guid": not_str_or_null | st.sampled_from(["", "not-a-guid", "1234", "g" * 32]),
    "managed": st.none() | numbers | st.text(max_size=10) | garbage_containers,
    "created": not_str_or_null | not_datetime_text,
    "updated": not_str_or_null | not_datetime_text,
    "closed": not_str_or_null | not_datetime_text,
    "tsid": not_str_or_null,
    "name": not_str_or_null,
    "description": not_str_or_null,
    "acs": bad_str_list | st.none(),
    "acs_ro": bad_str_list | st.none(),
    "webhooks": bad_str_list | st.none(),
}
IMMUTABLE_FIELDS = {"guid", "managed", "created"}
valid_name = st.text(max_size=40)
VALID_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "tsid": st.none() | st.text(max_size=20),
    "name": valid_name,
    "description": st.text(max_size=80),
    "acs": st.lists(st.sampled_from(["robots", "analysts", "hub", "zed"]), max_size=3),
    "acs_ro": st.lists(st.sampled_from(["readers", "robots", "ü"]), max_size=3),
    "updated": st.sampled_from([None, "2026-11-28T04:00:00Z", "2026-11-28T04:00:00.123+02:00"]),
}


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def not_a_uuid(text: str) -> bool:
    """uuid.UUID() also reads hyphen-less, braced and URN spellings: those are variants."""
    try:
        UUID(text)
    except ValueError:
        return True
    return False


def bad_guids() -> st.SearchStrategy[bytes]:
    """Path segments that are not a canonical GUID (already encoded for the request line)."""
    from urllib.parse import quote

    some_guid = str(uuid4())
    text_guids = st.one_of(
        st.text(max_size=60),
        st.text(alphabet="0123456789abcdefABCDEF-", min_size=1, max_size=40),
        st.sampled_from(
            [
                "",
                "0",
                "null",
                some_guid[:-1],
                some_guid + "0",
                some_guid + "/",
                some_guid.replace("-", "_"),
                some_guid.replace("-", " "),
                " " + some_guid,
                some_guid + "\x00",
                "%",
                "%zz",
                "%25",
                "%2F",
                "a" * 5000,
                "\u00e9" * 100,
                "\U0001f600",
                "\ud800",
            ]
        ),
    ).filter(not_a_uuid)
    return st.one_of(
        text_guids.map(lambda text: quote(utf8(text), safe="").encode("ascii")),
        text_guids.map(lambda text: quote(utf8(text), safe="%{}:").encode("ascii")),
        st.sampled_from([b"%E9%E9", b"%ff", b"%C3%28", b"%00", b"a%2fb", b"%2e"]),
    )


def guid_variants(guid: str) -> list[str]:
    """Spellings of a real GUID that are not the canonical one."""
    hexa = guid.replace("-", "")
    return [guid.upper(), hexa, hexa.upper(), "{" + guid + "}", "urn:uuid:" + guid]


def fill(template: str, fuzz: Target, **values: str) -> str:
    defaults = {
        "guid": fuzz.shared_case,
        "next": str(uuid4()),
        "dguid": fuzz.download_guid,
        "token": "A" * 43,
    }
    defaults.update(values)
    path = template
    for name, value in defaults.items():
        path = path.replace("{" + name + "}", value)
    return path


ANY_4XX = {400, 401, 403, 404, 405, 409, 413, 415, 417, 429}


# --------------------------------------------------------------------------
# the fuzzers
# --------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_odd_headers_at_every_route(target: Target, data: st.DataObject) -> None:
    """Garbage and conflicting credentials, odd content types and headers, everywhere."""
    method, template, reads_body, may_change = data.draw(st.sampled_from(ROUTES))
    case = data.draw(st.sampled_from([target.open_case, target.shared_case, target.private_case]))
    headers = data.draw(credentials(target))
    content_type = data.draw(content_types)
    if content_type is not None:
        headers.append((b"Content-Type", content_type))
    headers += data.draw(odd_headers)
    body = None
    if reads_body or data.draw(st.booleans()):
        body = data.draw(
            st.sampled_from(
                [
                    b'{"name": "from fuzz"}',
                    b'{"data": {"username": "alice", "password": "nope"}}',
                    b"{}",
                ]
            )
        )
    answer = exchange(
        target,
        method,
        fill(template, target, guid=case) + data.draw(query_strings),
        {200, *ANY_4XX},
        may_change=may_change,
        headers=headers,
        body=body,
        chunked=data.draw(st.booleans()),
    )
    expectations = [value.strip().lower() for name, value in headers if name == b"Expect"]
    if any(value and value != b"100-continue" for value in expectations):
        # Answered before routing, whatever else the request carries.
        assert answer.status == 417, answer.body
        return
    credentials_given = any(
        name in (b"X-Fusion-API-Token", b"Authorization") for name, _ in headers
    )
    tokens = [value for name, value in headers if name == b"X-Fusion-API-Token"]
    if (
        tokens
        and tokens[0] not in (ROBOT, FED)
        and template.startswith(("/api/case", "/api/events", "/api/auth/is_logged"))
    ):
        # A wrong key is refused where a caller is identified, whatever else is sent.
        assert answer.status in (400, 401, 413), answer.body
    if not credentials_given and template in ("/api/cases", "/api/auth/identities"):
        # Without a key, only the live session is an identity.
        session = (b"Cookie", target.cookie_header) in headers
        assert answer.status == (200 if session else 401), answer.body


@FUZZ
@given(data=st.data(), guid=bad_guids())
def test_bad_guids_in_path_segments(target: Target, data: st.DataObject, guid: bytes) -> None:
    """Random text, percent-encoding, very long, unicode: 400 or 404, nothing stored changes.

    A bad GUID is 400 on every route, downloads included (a bad token stays 404).
    """
    method, template, _, _ = data.draw(st.sampled_from(GUID_ROUTES))
    key = data.draw(st.sampled_from([FED, ROBOT]))
    slot = data.draw(
        st.sampled_from(
            [name for name in ("guid", "next", "dguid", "token") if "{" + name + "}" in template]
        )
    )
    # Only the chosen segment is bad; the others are valid.
    parts = [part.encode() for part in fill(template, target).split("/")]
    parts[template.split("/").index("{" + slot + "}")] = guid
    path = b"/".join(parts)
    body = b'{"name": "renamed"}' if method == "PUT" else None
    answer = exchange(
        target,
        method,
        path,
        {400, 404, 405},
        headers=[(b"X-Fusion-API-Token", key), (b"Content-Type", b"application/json")],
        body=body,
    )
    if answer.status == 405:
        # Only when the bad segment made the path another route's (a "/" in it).
        assert b"/" in guid.replace(b"%2F", b"/").replace(b"%2f", b"/") or guid in (b"", b"..")
    if answer.status == 400 and slot != "token":
        assert answer.envelope()["message"].startswith("invalid GUID for "), answer.body


@FUZZ
@given(data=st.data())
def test_guid_variants_are_refused_everywhere(target: Target, data: st.DataObject) -> None:
    """Upper-case, no-hyphen, braces, URN: refused on every route, nothing changes.

    One policy (PROTOCOL.md): a route GUID is the canonical lower-case form, 400
    otherwise; braces match no route segment at all (404).
    """
    variant = data.draw(st.sampled_from(guid_variants(target.shared_case)))
    method, template = data.draw(
        st.sampled_from(
            [
                ("GET", "/api/case/{guid}"),
                ("PUT", "/api/case/{guid}"),
                ("GET", "/api/events/case/{guid}"),
                ("PUT", "/api/case/{next}/attach/{guid}"),
                ("GET", "/api/download/{guid}/{token}"),
            ]
        )
    )
    if template.startswith("/api/download"):
        variant = data.draw(st.sampled_from(guid_variants(target.download_guid)))
        path = fill(template, target, guid=variant, token="wrong-token-" + "A" * 32)
    elif "{next}" in template:
        # attach onto a spelling of an existing case: never a second copy of it
        path = fill(template, target, next=target.open_case, guid=variant)
    else:
        path = fill(template, target, guid=variant)
    name = data.draw(valid_name)
    answer = exchange(
        target,
        method,
        path,
        {400, 404},
        headers=[(b"X-Fusion-API-Token", FED), (b"Content-Type", b"application/json")],
        body=json.dumps({"name": name}).encode() if method == "PUT" else None,
    )
    cases = answer.cases_after
    assert all(guid == str(UUID(guid)) for guid in cases), cases
    assert answer.status == (404 if "{" in variant else 400), answer.body
    if answer.status == 400:
        assert answer.envelope()["message"].startswith("invalid GUID for "), answer.body


@FUZZ
@given(data=st.data(), body=malformed_json)
def test_malformed_json_bodies(target: Target, data: st.DataObject, body: bytes) -> None:
    """Bodies that are not JSON, or not the expected shape: 400, never stored."""
    method, template, _, _ = data.draw(st.sampled_from(BODY_ROUTES))
    case = data.draw(st.sampled_from([target.open_case, target.shared_case]))
    path = fill(template, target, guid=case)
    content_type = data.draw(
        st.sampled_from([b"application/json", b"application/json; charset=utf-8", None])
    )
    headers = [(b"X-Fusion-API-Token", ROBOT)]
    if content_type is not None:
        headers.append((b"Content-Type", content_type))
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        decoded = ValueError
    # Only an object can succeed: on create, one that decodes as a Case; on update,
    # one whose known keys are valid; never a login (no such user/password).
    may_succeed = isinstance(decoded, dict) and template != "/api/auth/login"
    answer = exchange(
        target,
        method,
        path,
        {200, 400, 413} if may_succeed else {400, 413},
        may_change=True,
        headers=headers,
        body=body,
        chunked=data.draw(st.booleans()),
    )
    if answer.status == 413:
        assert len(body) > MAX_BODY, len(body)


DEEP_LIST = b"[" * 5000 + b"]" * 5000
DEEP_OBJECT = b'{"a":' * 2000 + b"1" + b"}" * 2000  # 12 kB: under the 16 kB body cap
UNCLOSED = b"[" * 5000


@pytest.mark.parametrize(
    ("method", "template", "body"),
    [
        ("POST", "/api/auth/login", DEEP_LIST),
        ("POST", "/api/auth/login", DEEP_OBJECT),
        ("POST", "/api/auth/login", UNCLOSED),
        ("POST", "/api/case", DEEP_OBJECT),
        ("PUT", "/api/case/{guid}", DEEP_LIST),
        ("PUT", "/api/case/{guid}", DEEP_OBJECT),
        ("PUT", "/api/case/{guid}", UNCLOSED),
    ],
    ids=[
        "login-list",
        "login-object",
        "login-unclosed",
        "create-object",
        "update-list",
        "update-object",
        "update-unclosed",
    ],
)
def test_deeply_nested_json_is_a_400(
    target: Target, method: str, template: str, body: bytes
) -> None:
    """A few kilobytes of ``[[[[...`` must be refused as bad input, not crash the handler.

    ``msgspec`` raises ``RecursionError`` (not ``DecodeError``) past its
    nesting limit; ``read_json`` and ``read_concept`` answer it with 400. That
    limit follows the interpreter's: Python 3.13 decodes the 2,000-deep object
    that 3.11 refuses, and a case body whose only key is unknown is then an
    ordinary request (the key is ignored, nothing of it is stored). Either way,
    never a 500, and nothing stored changes unless the answer is 200.
    """
    ignored_key = body is DEEP_OBJECT and "case" in template
    answer = exchange(
        target,
        method,
        fill(template, target),
        {200, 400} if ignored_key else {400},
        may_change=ignored_key,
        headers=[(b"X-Fusion-API-Token", ROBOT), (b"Content-Type", b"application/json")],
        body=body,
    )
    if answer.status == 200:
        assert b'"a"' not in answer.body


@pytest.mark.parametrize("body", [DEEP_LIST, UNCLOSED], ids=["list", "unclosed"])
def test_deeply_nested_list_is_no_case(target: Target, body: bytes) -> None:
    """Decoded straight into a Case, a top-level array fails before any depth is reached."""
    exchange(
        target,
        "POST",
        "/api/case",
        {400},
        headers=[(b"X-Fusion-API-Token", ROBOT), (b"Content-Type", b"application/json")],
        body=body,
    )


@FUZZ
@given(data=st.data())
def test_wrong_types_in_every_case_field(target: Target, data: st.DataObject) -> None:
    """Every Case field with wrong JSON types or nested garbage: 400 naming it, nothing stored."""
    wrong = data.draw(
        st.lists(st.sampled_from(sorted(WRONG_FIELD_VALUES)), min_size=1, max_size=3, unique=True)
    )
    fields: dict[str, Any] = {}
    for name in data.draw(st.lists(st.sampled_from(sorted(VALID_FIELD_VALUES)), unique=True)):
        fields[name] = data.draw(VALID_FIELD_VALUES[name])
    for name in wrong:
        fields[name] = data.draw(WRONG_FIELD_VALUES[name])
    if "acs" not in wrong:
        fields["acs"] = ["robots", *fields.get("acs", [])]
    create = data.draw(st.booleans())
    if create:
        method, path = "POST", "/api/case"
        refused = True
    else:
        method, path = "PUT", f"/api/case/{target.shared_case}"
        # update ignores guid, managed and created
        refused = any(name not in IMMUTABLE_FIELDS for name in wrong)
    answer = exchange(
        target,
        method,
        path,
        {400} if refused else {200, 400},
        may_change=not refused,
        headers=[(b"X-Fusion-API-Token", ROBOT), (b"Content-Type", b"application/json")],
        body=json.dumps(fields).encode(),
    )
    if refused:
        message = answer.envelope()["message"]
        assert any(name in message for name in wrong) or "closed" in message, (fields, message)


login_value = nested_garbage | st.sampled_from(
    ["alice", "", "alice\x00", "a" * 5000, "*", "(uid=*)", "admin)(|(uid=*"]
)


@FUZZ
@given(data=st.data())
def test_login_bodies_with_wrong_types(target: Target, data: st.DataObject) -> None:
    """``{"data": {...}}`` with garbage credentials: 400, no cookie, no identity recorded."""
    inner: Any = data.draw(
        st.fixed_dictionaries(
            {},
            optional={"username": login_value, "password": login_value, "code": login_value},
        )
        | nested_garbage
    )
    body: Any = {"data": inner}
    if data.draw(st.booleans()):
        body[data.draw(st.text(max_size=8))] = data.draw(nested_garbage)
    if isinstance(inner, dict) and inner.get("password") == TEST_USERS["alice"][0]:
        return
    answer = exchange(
        target,
        "POST",
        "/api/auth/login",
        {400},
        headers=[(b"Content-Type", b"application/json")],
        body=json.dumps(body).encode(),
    )
    assert "Set-Cookie" not in answer.headers


@FUZZ
@given(data=st.data())
def test_valid_case_bodies_succeed(target: Target, data: st.DataObject) -> None:
    """The other side of the oracle: well-typed bodies are accepted and stored as sent."""
    fields = {
        name: data.draw(strategy)
        for name, strategy in VALID_FIELD_VALUES.items()
        if data.draw(st.booleans())
    }
    fields["acs"] = ["robots", *fields.get("acs", [])]
    create = data.draw(st.booleans())
    method, path = ("POST", "/api/case") if create else ("PUT", f"/api/case/{target.open_case}")
    answer = exchange(
        target,
        method,
        path,
        {200},
        may_change=True,
        headers=[(b"X-Fusion-API-Token", ROBOT), (b"Content-Type", b"application/json")],
        body=json.dumps(fields).encode(),
    )
    stored = answer.cases_after[answer.envelope()["data"]["guid"]]
    for name in ("name", "description", "tsid"):
        if name in fields:
            assert stored[name] == fields[name]
    assert set(stored["acs"]) == set(fields["acs"])
    if create:
        target.request(
            "DELETE", f"/api/case/{stored['guid']}", headers=[(b"X-Fusion-API-Token", ROBOT)]
        )
    else:
        # the open case must stay open to everyone
        target.request(
            "PUT",
            f"/api/case/{target.open_case}",
            headers=[(b"X-Fusion-API-Token", ROBOT)],
            body=b'{"acs": [], "acs_ro": []}',
        )


@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
@given(data=st.data())
def test_oversized_bodies(target: Target, data: st.DataObject) -> None:
    """Over the configured max body size, with Content-Length, chunked, or a lying length."""
    method, template, reads_body, may_change = data.draw(st.sampled_from(ROUTES))
    size = data.draw(st.integers(MAX_BODY + 1, 4 * MAX_BODY))
    body = b'{"name": "' + b"x" * (size - 12) + b'"}'
    mode = data.draw(st.sampled_from(["length", "chunked", "lying"]))
    key = data.draw(st.sampled_from([ROBOT, FED]))
    answer = exchange(
        target,
        method,
        fill(template, target, guid=target.open_case),
        {200, *ANY_4XX},
        may_change=may_change and not reads_body,
        headers=[(b"X-Fusion-API-Token", key), (b"Content-Type", b"application/json")],
        body=body if mode != "lying" else body[:100],
        chunked=mode == "chunked",
        content_length=10**12 if mode == "lying" else None,
    )
    if reads_body:
        assert answer.status == 413, answer.body
        assert str(MAX_BODY) in answer.envelope()["message"]


@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
@given(data=st.data())
def test_wrong_methods_and_unknown_paths(target: Target, data: st.DataObject) -> None:
    """405 with Allow for a known path, 404 for an unknown one, both in the envelope."""
    method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    unknown = data.draw(st.booleans())
    if unknown:
        suffix = data.draw(st.text(alphabet="abcxyz/._-", max_size=20))
        path = "/api/" + suffix + "zz"
        allowed = {404}
    else:
        route_methods: dict[str, set[str]] = {}
        for route_method, template, _, _ in ROUTES:
            route_methods.setdefault(template, set()).add(route_method)
        template = data.draw(st.sampled_from(sorted(route_methods)))
        if method in route_methods[template] or (
            method == "HEAD" and "GET" in route_methods[template]
        ):
            return
        path = fill(template, target)
        allowed = {405}
    answer = exchange(
        target,
        method,
        path,
        allowed,
        headers=[(b"X-Fusion-API-Token", FED)],
        body=b"{}" if method in ("POST", "PUT") else None,
    )
    if answer.status == 405:
        assert answer.headers.get("Allow"), answer.headers


@pytest.mark.parametrize("value", [b"0", b"fancy-feature", b"\xe9t\xe9"])
@pytest.mark.parametrize("path", ["/api/info", "/api/cases", "/api/case/{guid}"])
def test_unknown_expect_header_is_an_envelope(target: Target, value: bytes, path: str) -> None:
    """``Expect: <anything but 100-continue>`` gets the envelope, never a 500.

    aiohttp runs the route's expect handler before any middleware; its
    default one answered 417 in plain text, and 500 for a non-UTF-8 value
    (found by this module; fixed by ``fusion.server.app.expect_handler``).
    """
    answer = exchange(
        target,
        "GET",
        fill(path, target),
        {417},
        headers=[(b"X-Fusion-API-Token", ROBOT), (b"Expect", value)],
    )
    assert answer.envelope() == {"status": 417, "message": "unsupported Expect header"}


# --------------------------------------------------------------------------
# body transport: Content-Encoding, aborted bodies, multipart part headers
# --------------------------------------------------------------------------

# The server decodes bodies itself (aiohttp's decompression is off): gzip and
# deflate, anything else 415, whatever the body holds.
content_encoding = (
    st.sampled_from(
        [b"gzip", b"deflate", b"gzip, deflate", b"identity", b"x-unknown", b"GZIP", b"br", b"zstd"]
    )
    | garbage_value
)


@FUZZ
@given(data=st.data(), encoding=content_encoding)
def test_content_encoding_variants(target: Target, data: st.DataObject, encoding: bytes) -> None:
    """Any ``Content-Encoding`` with a body that may or may not be in it: 2xx or 4xx."""
    method, template, _, _ = data.draw(st.sampled_from(BODY_ROUTES))
    plain = data.draw(st.sampled_from([b'{"name": "encoded"}', b'{"data": {}}', b""]))
    body = data.draw(
        st.sampled_from(
            [plain, gzip.compress(plain), zlib.compress(plain), gzip.compress(plain)[:12]]
        )
        | st.binary(max_size=300)
    )
    exchange(
        target,
        method,
        fill(template, target, guid=target.open_case),
        {200, 400, 413, 415},
        may_change=True,
        headers=[
            (b"X-Fusion-API-Token", ROBOT),
            (b"Content-Type", b"application/json"),
            (b"Content-Encoding", encoding),
        ],
        body=body,
        chunked=data.draw(st.booleans()),
    )


@settings(FUZZ, max_examples=max(1, EXAMPLES // 4))
@given(data=st.data())
def test_aborted_bodies(target: Target, data: st.DataObject) -> None:
    """A client that closes mid-body: one DEBUG line, no error, nothing stored."""
    method, template, _, _ = data.draw(st.sampled_from(BODY_ROUTES))
    sent = data.draw(st.sampled_from([b"", b"{", b'{"name": "half', b'{"data": {"username"']))
    headers = [(b"X-Fusion-API-Token", ROBOT), (b"Content-Type", b"application/json")]
    if data.draw(st.booleans()):
        headers.append((b"Content-Encoding", b"gzip"))
        sent = gzip.compress(b'{"name": "zipped"}')[: len(sent) + 5]
    before = target.cases()
    target.errors.records.clear()
    seen = target.disconnects.count
    target.abort(method, fill(template, target, guid=target.open_case), headers, sent)
    # Answered within body_timeout whatever the server had read: wait for its line.
    deadline = time.monotonic() + 60
    while target.disconnects.count == seen:
        assert time.monotonic() < deadline, "no DEBUG line for the closed connection"
        time.sleep(0.01)
    assert target.disconnects.count == seen + 1
    assert target.cases() == before
    assert target.errors.records == [], [r.getMessage() for r in target.errors.records]


part_header_value = garbage_value | st.sampled_from(
    [
        b'form-data; name="file"; filename="a\x00b.txt"',
        b'form-data; name="file"; filename="' + b"n" * 9000 + b'"',
        b"form-data; name=\"file\"; filename*=UTF-8''%00%2e%2e%2fx",
        b'form-data; name="file"; filename="..\\..\\evil"',
        b'form-data; name="file"; filename="r\xe2\x80\xaegnp.exe"',
        b"form-data; name=file",
        b'form-data; name="file"',
    ]
)


@FUZZ
@given(data=st.data())
def test_odd_multipart_part_headers(target: Target, data: st.DataObject) -> None:
    """Garbage, NUL, over-long and hostile part headers: 4xx and nothing uploaded."""
    headers = [b"Content-Disposition: " + data.draw(part_header_value)]
    for _ in range(data.draw(st.integers(0, 2))):
        name = data.draw(st.sampled_from([b"Content-Type", b"X-Extra", b"Content-Length"]))
        headers.append(name + b": " + data.draw(garbage_value))
    if data.draw(st.booleans()):
        headers.append(b"X-Long: " + b"h" * data.draw(st.integers(7000, 9000)))
    body = b"--BB\r\n" + b"\r\n".join(headers) + b"\r\n\r\ncontent\r\n--BB--\r\n"
    answer = exchange(
        target,
        "POST",
        "/upload",
        {200, 400, 409, 413},
        headers=[(b"Content-Type", b"multipart/form-data; boundary=BB")],
        body=body,
    )
    names = [path.name for path in target.uploads.iterdir()] if target.uploads.exists() else []
    if answer.status == 200:
        # A name made safe: one visible file, removed for the next example.
        assert names == [answer.envelope()["data"]["name"]], names
        (target.uploads / names[0]).unlink()
    else:
        assert names == [], names
