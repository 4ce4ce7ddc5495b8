"""fusion.helper.aiohttp over real loopback sockets."""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from fusion.concept import Case, Event, Identity, Info
from fusion.helper.http_envelope import (
    FusionHTTPError,
    envelope_middleware,
    error_response,
    json_response,
)
from fusion.helper.http_request import (
    IPNetwork,
    client_ip,
    get_guid,
    read_concept,
    read_json,
    stream_multipart_to_file,
)
from fusion.helper.http_response import content_disposition, stream_response
from fusion.helper.sse import SSE_KEEPALIVE, SSEEvent, format_sse, iter_sse
from fusion.helper.store import StoreUnavailableError

Client = Any  # aiohttp.test_utils.TestClient[web.Request, web.Application]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GUID = "0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d11"


def _app(routes: list[web.RouteDef], **kwargs: Any) -> web.Application:
    app = web.Application(middlewares=[envelope_middleware()], **kwargs)
    app.add_routes(routes)
    return app


def _body(response: web.Response) -> Any:
    assert response.body is not None
    assert isinstance(response.body, bytes)
    return json.loads(response.body)


# -- envelope ----------------------------------------------------------------


def test_envelope_shapes() -> None:
    assert _body(json_response()) == {"status": 200}
    assert _body(json_response([1, 2, 3])) == {"status": 200, "data": [1, 2, 3], "count": 3}
    assert _body(json_response({"a": 1, "b": 2})) == {
        "status": 200,
        "data": {"a": 1, "b": 2},
        "count": 2,
    }
    assert _body(json_response("hello")) == {"status": 200, "data": "hello", "count": 5}
    assert _body(json_response([])) == {"status": 200, "data": [], "count": 0}
    info = Info(api="timeline", version="1.0")
    assert _body(json_response(info)) == {
        "status": 200,
        "data": {"api": "timeline", "version": "1.0"},
        "count": 2,
    }
    cases = [Case(name="one"), Case(name="two")]
    body = _body(json_response(cases))
    assert body["count"] == 2
    assert [item["name"] for item in body["data"]] == ["one", "two"]
    assert body["data"][0]["guid"] == str(cases[0].guid)
    identity = Identity(username="alice", groups=frozenset({"b", "a"}))
    assert _body(json_response(identity))["data"] == {"username": "alice", "groups": ["a", "b"]}


def test_error_envelope() -> None:
    response = error_response(404, "case not found")
    assert response.status == 404
    assert response.content_type == "application/json"
    assert _body(response) == {"status": 404, "message": "case not found"}
    # An error status always carries a message, a default one if needed.
    assert _body(json_response(status=503)) == {"status": 503, "message": "Service Unavailable"}


def test_envelope_refuses_data_without_length() -> None:
    with pytest.raises(TypeError, match="int"):
        json_response(42)


def test_fusion_http_error_needs_error_status() -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        FusionHTTPError(200, "fine")
    assert str(FusionHTTPError(418, "teapot")) == "418: teapot"


# -- middleware --------------------------------------------------------------


async def _raise_fusion(request: web.Request) -> web.Response:
    raise FusionHTTPError(429, "too many login failures", headers={"Retry-After": "7"})


async def _raise_store(request: web.Request) -> web.Response:
    raise StoreUnavailableError("connection refused to redis")


async def _raise_bug(request: web.Request) -> web.Response:
    raise RuntimeError("secret internal detail")


async def _raise_aiohttp_text(request: web.Request) -> web.Response:
    raise web.HTTPBadRequest(text="login body must be an object")


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/elsewhere")


async def _read_all(request: web.Request) -> web.Response:
    return json_response({"size": len(await request.read())})


async def _get_guid(request: web.Request) -> web.Response:
    return json_response(str(get_guid(request)))


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    app = _app(
        [
            web.get("/fusion", _raise_fusion),
            web.get("/store", _raise_store),
            web.get("/bug", _raise_bug),
            web.get("/text", _raise_aiohttp_text),
            web.get("/redirect", _redirect),
            web.post("/read", _read_all),
            web.get("/api/case/{case_guid}", _get_guid),
        ],
        client_max_size=1024,
    )
    return await aiohttp_client(app)


async def _envelope(response: aiohttp.ClientResponse) -> Any:
    assert response.content_type == "application/json"
    return await response.json()


async def test_unknown_route_is_404_envelope(client: Client) -> None:
    response = await client.get("/nowhere")
    assert response.status == 404
    assert await _envelope(response) == {"status": 404, "message": "Not Found"}


async def test_wrong_method_is_405_with_allow(client: Client) -> None:
    response = await client.post("/fusion")
    assert response.status == 405
    assert await _envelope(response) == {"status": 405, "message": "Method Not Allowed"}
    assert "GET" in response.headers["Allow"]


async def test_fusion_error_keeps_headers(client: Client) -> None:
    response = await client.get("/fusion")
    assert response.status == 429
    assert response.headers["Retry-After"] == "7"
    assert await _envelope(response) == {"status": 429, "message": "too many login failures"}


async def test_store_outage_is_503(client: Client) -> None:
    response = await client.get("/store")
    assert response.status == 503
    assert await _envelope(response) == {"status": 503, "message": "shared store unavailable"}


async def test_unexpected_error_is_generic_500(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="fusion"):
        response = await client.get("/bug")
    assert response.status == 500
    text = await response.text()
    assert "secret" not in text
    assert "Traceback" not in text
    assert json.loads(text) == {"status": 500, "message": "internal server error"}
    logged = [r for r in caplog.records if r.exc_info]
    assert logged
    assert "secret internal detail" in str(logged[0].exc_info[1])  # type: ignore[index]


async def test_custom_aiohttp_text_becomes_message(client: Client) -> None:
    response = await client.get("/text")
    assert response.status == 400
    assert await _envelope(response) == {"status": 400, "message": "login body must be an object"}


async def test_redirect_passes_through(client: Client) -> None:
    response = await client.get("/redirect", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/elsewhere"


async def test_client_max_size_is_413_envelope(client: Client) -> None:
    response = await client.post("/read", data=b"x" * 5000)
    assert response.status == 413
    body = await _envelope(response)
    assert body["status"] == 413
    assert "1024" in body["message"]


async def test_get_guid(client: Client) -> None:
    response = await client.get(f"/api/case/{GUID}")
    assert (await _envelope(response))["data"] == GUID
    hexa = GUID.replace("-", "")
    for bad in (
        "not-a-guid",
        "1234",
        "0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d1z",
        # Spellings UUID() reads: one GUID has one spelling on the wire.
        GUID.upper(),
        hexa,
        f"urn:uuid:{GUID}",
        GUID.replace("c", "C", 1),  # one upper-case letter
        "\u0660" * 8 + GUID[8:],  # digits, but not ASCII ones
    ):
        response = await client.get(f"/api/case/{bad}")
        assert response.status == 400
        assert await _envelope(response) == {
            "status": 400,
            "message": "invalid GUID for case_guid: expected lower-case 8-4-4-4-12 hex",
        }


# -- read_json / read_concept ------------------------------------------------


async def _echo_json(request: web.Request) -> web.Response:
    return json_response({"body": await read_json(request, max_size=64)})


async def _echo_case(request: web.Request) -> web.Response:
    return json_response(await read_concept(request, Case, max_size=4096))


async def _echo_deep(request: web.Request) -> web.Response:
    return json_response({"body": await read_json(request, max_size=65536)})


async def _echo_event(request: web.Request) -> web.Response:
    return json_response(await read_concept(request, Event, max_size=65536))


@pytest.fixture
async def json_client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(
        _app(
            [
                web.post("/json", _echo_json),
                web.post("/case", _echo_case),
                web.post("/deep", _echo_deep),
                web.post("/event", _echo_event),
            ]
        )
    )


async def _error_message(response: aiohttp.ClientResponse, status: int) -> str:
    assert response.status == status, await response.text()
    body = await _envelope(response)
    assert body["status"] == status
    message: str = body["message"]
    return message


async def test_read_json_accepts_json(json_client: Client) -> None:
    response = await json_client.post("/json", json={"a": [1, 2]})
    assert (await _envelope(response))["data"] == {"body": {"a": [1, 2]}}
    # No Content-Type at all (bare scripts), and a UTF-8 BOM, are accepted.
    response = await json_client.post(
        "/json", data=b"\xef\xbb\xbf[1]", skip_auto_headers=["Content-Type"]
    )
    assert (await _envelope(response))["data"] == {"body": [1]}


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b'{"a": 1', {}, "invalid JSON body"),
        (b'{"a": 1} trailing', {}, "invalid JSON body"),
        (b'"\xff\xfe"', {}, "not valid UTF-8"),
        (b"", {}, "empty body"),
        (b"   ", {}, "empty body"),
        (b"{}", {"Content-Type": "text/html"}, "expected an application/json body, got text/html"),
        (b"{}", {"Content-Type": "application/json; charset=latin-1"}, "must be UTF-8"),
    ],
)
async def test_read_json_refuses_bad_bodies(
    json_client: Client, body: bytes, headers: dict[str, str], expected: str
) -> None:
    headers = {"Content-Type": "application/json", **headers}
    response = await json_client.post("/json", data=body, headers=headers)
    assert expected in await _error_message(response, 400)


async def test_deeply_nested_json_is_a_400(json_client: Client) -> None:
    """Past msgspec's depth limit it raises RecursionError: still a 400, not a 500."""
    headers = {"Content-Type": "application/json"}
    deep = b"[" * 30_000 + b"]" * 30_000  # past the C recursion limit (3.13: 10000), < 64 KiB
    response = await json_client.post("/deep", data=deep, headers=headers)
    assert "nested too deeply" in await _error_message(response, 400)
    response = await json_client.post("/deep", data=b"[" * 20 + b"]" * 20, headers=headers)
    assert response.status == 200
    event = b'{"source": "s", "category": "c", "case": {"name": "x"}, "ext": {"a": ' + deep + b"}}"
    response = await json_client.post("/event", data=event, headers=headers)
    assert "nested too deeply" in await _error_message(response, 400)


async def test_read_json_caps_declared_size(json_client: Client) -> None:
    response = await json_client.post("/json", json=["x" * 100])
    assert "limit is 64 bytes" in await _error_message(response, 413)


async def test_read_json_caps_chunked_body(json_client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'["'
        for _ in range(20):
            yield b"xxxxxxxx"
        yield b'"]'

    response = await json_client.post(
        "/json", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert "limit is 64 bytes" in await _error_message(response, 413)


async def test_read_concept(json_client: Client) -> None:
    response = await json_client.post("/case", json={"name": "incident", "acs": ["dfir"]})
    data = (await _envelope(response))["data"]
    assert data["name"] == "incident"
    assert data["acs"] == ["dfir"]
    UUID(data["guid"])

    response = await json_client.post("/case", json={"name": "x", "acs": ["ok", 3]})
    message = await _error_message(response, 400)
    assert message.startswith("invalid Case:")
    assert "$.acs[1]" in message

    response = await json_client.post("/case", json=["not", "an", "object"])
    assert "invalid Case" in await _error_message(response, 400)

    response = await json_client.post(
        "/case", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert "invalid JSON body" in await _error_message(response, 400)


# -- client_ip ---------------------------------------------------------------


async def _ip_client(
    aiohttp_client: AiohttpClient, trusted: list[str], header: str = "x-forwarded-for"
) -> Client:
    networks: list[IPNetwork] = [ipaddress.ip_network(n) for n in trusted]

    async def handler(request: web.Request) -> web.Response:
        if header == "forwarded":
            return json_response(client_ip(request, networks, header="forwarded"))
        return json_response(client_ip(request, networks))

    return await aiohttp_client(_app([web.get("/ip", handler)]))


async def _ip(client: Client, headers: dict[str, str]) -> str:
    response = await client.get("/ip", headers=headers)
    data: str = (await _envelope(response))["data"]
    return data


async def test_client_ip_without_trusted_proxies(aiohttp_client: AiohttpClient) -> None:
    client = await _ip_client(aiohttp_client, [])
    assert await _ip(client, {"X-Forwarded-For": "203.0.113.5"}) == "127.0.0.1"


async def test_client_ip_untrusted_peer_ignores_headers(aiohttp_client: AiohttpClient) -> None:
    client = await _ip_client(aiohttp_client, ["10.0.0.0/8"])
    assert await _ip(client, {"X-Forwarded-For": "203.0.113.5"}) == "127.0.0.1"


async def test_client_ip_walks_chain_right_to_left(aiohttp_client: AiohttpClient) -> None:
    client = await _ip_client(aiohttp_client, ["127.0.0.0/8", "10.0.0.0/8"])
    assert await _ip(client, {}) == "127.0.0.1"
    assert await _ip(client, {"X-Forwarded-For": "203.0.113.5"}) == "203.0.113.5"
    # The client prepended a fake hop: the first untrusted address from the right wins.
    assert await _ip(client, {"X-Forwarded-For": "1.1.1.1, 203.0.113.5, 10.0.0.2"}) == "203.0.113.5"
    # Every hop trusted: the leftmost one.
    assert await _ip(client, {"X-Forwarded-For": "10.0.0.3, 10.0.0.2"}) == "10.0.0.3"
    # Garbage stops the walk at the nearest hop we could read.
    assert await _ip(client, {"X-Forwarded-For": "203.0.113.9, <script>"}) == "127.0.0.1"
    assert await _ip(client, {"X-Forwarded-For": "[2001:db8::1]:4711"}) == "2001:db8::1"
    assert await _ip(client, {"X-Forwarded-For": "203.0.113.7:1234"}) == "203.0.113.7"
    # Forwarded is not read in X-Forwarded-For mode.
    assert await _ip(client, {"Forwarded": "for=203.0.113.1"}) == "127.0.0.1"


async def test_client_ip_forwarded_header(aiohttp_client: AiohttpClient) -> None:
    client = await _ip_client(aiohttp_client, ["127.0.0.0/8"], header="forwarded")
    forwarded = 'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"'
    assert await _ip(client, {"Forwarded": forwarded}) == "2001:db8:cafe::17"
    assert await _ip(client, {"Forwarded": "for=_hidden"}) == "127.0.0.1"
    assert await _ip(client, {"X-Forwarded-For": "203.0.113.5"}) == "127.0.0.1"


# -- downloads ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", 'attachment; filename="report.pdf"'),
        ('a"b.txt', 'attachment; filename="a_b.txt"'),
        ("evil\r\nSet-Cookie: x=1", 'attachment; filename="evil__Set-Cookie_ x=1"'),
        ("../../etc/passwd", 'attachment; filename="passwd"'),
        ("C:\\Windows\\win.ini", 'attachment; filename="win.ini"'),
        ("a;b", 'attachment; filename="a_b"'),
        ("", 'attachment; filename="download"'),
        ("..", 'attachment; filename="download"'),
        (
            "résumé é.txt",
            "attachment; filename=\"resume e.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%A9.txt",
        ),
        (
            "日本.txt",
            "attachment; filename=\"download.txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt",
        ),
    ],
)
def test_content_disposition(filename: str, expected: str) -> None:
    value = content_disposition(filename)
    assert value == expected
    assert "\r" not in value
    assert "\n" not in value


async def test_stream_response(aiohttp_client: AiohttpClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for index in range(3):
            yield b"chunk%d;" % index

    async def sized(request: web.Request) -> web.StreamResponse:
        return await stream_response(request, chunks(), "données.bin", size=21)

    async def chunked(request: web.Request) -> web.StreamResponse:
        return await stream_response(request, [b"a", b"b"], "plain.txt", "text/plain")

    async def broken(request: web.Request) -> web.StreamResponse:
        async def failing() -> AsyncIterator[bytes]:
            yield b"partial"
            raise OSError("disk went away")

        return await stream_response(request, failing(), "broken.bin")

    client = await aiohttp_client(
        _app([web.get("/sized", sized), web.get("/chunked", chunked), web.get("/broken", broken)])
    )
    response = await client.get("/sized")
    assert response.status == 200
    assert response.headers["Content-Length"] == "21"
    assert await response.read() == b"chunk0;chunk1;chunk2;"
    assert response.content_disposition is not None
    assert response.content_disposition.filename == "données.bin"

    response = await client.get("/chunked")
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.content_type == "text/plain"
    assert await response.read() == b"ab"

    # A source failing midway must not look like a complete download.
    response = await client.get("/broken")
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_stream_multipart_to_file(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    target = tmp_path / "upload.bin"

    async def upload(request: web.Request) -> web.Response:
        saved = await stream_multipart_to_file(request, target, max_size=10_000)
        return json_response(
            {"size": saved.size, "filename": saved.filename, "type": saved.content_type}
        )

    client = await aiohttp_client(_app([web.post("/upload", upload)]))
    payload = bytes(range(256)) * 30

    form = aiohttp.FormData()
    form.add_field("comment", "ignored")
    form.add_field("file", payload, filename="x.bin", content_type="application/x-thing")
    response = await client.post("/upload", data=form)
    assert (await _envelope(response))["data"] == {
        "size": len(payload),
        "filename": "x.bin",
        "type": "application/x-thing",
    }
    assert target.read_bytes() == payload

    too_big = aiohttp.FormData()
    too_big.add_field("file", b"z" * 20_000, filename="big.bin")
    response = await client.post("/upload", data=too_big)
    assert "limit is 10000" in await _error_message(response, 413)
    assert target.read_bytes() == payload  # the previous upload is untouched
    assert _names(tmp_path) == ["upload.bin"]

    other = aiohttp.FormData()
    other.add_field("attachment", b"data", filename="a.bin")
    response = await client.post("/upload", data=other)
    assert "'file' is missing" in await _error_message(response, 400)

    response = await client.post("/upload", json={"file": "nope"})
    assert "expected a multipart/form-data body" in await _error_message(response, 400)


# -- server-sent events ------------------------------------------------------


def test_format_sse() -> None:
    assert format_sse(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert format_sse("x", id="42", event="case") == b"id: 42\nevent: case\ndata: x\n\n"
    assert format_sse("one\ntwo\r\nthree") == b"data: one\ndata: two\ndata: three\n\n"
    assert format_sse("", retry=1500) == b"retry: 1500\ndata: \n\n"
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        format_sse("x", id="1\n2")
    with pytest.raises(ValueError, match="CR or LF"):
        format_sse("x", event="a\rb")
    assert SSE_KEEPALIVE == b": keepalive\n\n"


async def _parse(*chunks: bytes, max_event_size: int = 1 << 20) -> list[SSEEvent]:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return [event async for event in iter_sse(source(), max_event_size=max_event_size)]


async def test_iter_sse_rules() -> None:
    stream = (
        b"\xef\xbb\xbf: a comment\n"
        b"data: first\n"
        b"data:second line\n"
        b"\n"
        b"id: 7\n"
        b"event: update_case\n"
        b"retry: 2000\n"
        b"data\n"  # field without colon: empty value
        b"\n"
        b"data: inherits id\n\n"
        b"id\n"  # resets the last event id
        b"event: ignored\n\n"  # no data: nothing dispatched, type reset
        b"retry: soon\n"  # not digits: ignored
        b"unknown: field\n"
        b"data: after reset\n\n"
        b"data: never terminated"
    )
    expected = [
        SSEEvent(None, None, "first\nsecond line", None),
        SSEEvent("7", "update_case", "", 2000),
        SSEEvent("7", None, "inherits id", 2000),
        SSEEvent(None, None, "after reset", 2000),
    ]
    assert await _parse(stream) == expected
    # Same result whatever the chunking, down to one byte at a time.
    assert await _parse(*(stream[i : i + 1] for i in range(len(stream)))) == expected


async def test_iter_sse_line_endings() -> None:
    expected = [SSEEvent(None, None, "a\nb", None), SSEEvent(None, None, "c", None)]
    for newline in (b"\n", b"\r\n", b"\r"):
        stream = b"data: a" + newline + b"data: b" + newline * 2 + b"data: c" + newline * 2
        assert await _parse(stream) == expected
    # A CRLF split across chunks is one line break, not two (which would dispatch).
    assert await _parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [SSEEvent(None, None, "a\nb", None)]
    # A trailing CR at end of stream still ends the line.
    assert await _parse(b"data: z\r\r") == [SSEEvent(None, None, "z", None)]
    # UTF-8 split across chunks, BOM only stripped once.
    text = "é\ufeff".encode()
    assert await _parse(b"data: " + text[:1], text[1:] + b"\n\n") == [
        SSEEvent(None, None, "é\ufeff", None)
    ]


async def test_iter_sse_caps_event_size() -> None:
    one = b"data: " + b"x" * 60 + b"\n"
    assert len((await _parse(one + b"\n", max_event_size=100))[0].data) == 60
    with pytest.raises(ValueError, match="larger than 100"):
        await _parse(one + one + b"\n", max_event_size=100)

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"y" * 50

    with pytest.raises(ValueError, match="longer than 100"):
        async for _ in iter_sse(endless(), max_event_size=100):
            pass


async def test_sse_round_trip_over_http(aiohttp_client: AiohttpClient) -> None:
    payloads = ['{"category": "create_case"}', "multi\nline", ""]

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(SSE_KEEPALIVE)
        for index, payload in enumerate(payloads):
            await response.write(format_sse(payload, id=str(index), event="case"))
        await response.write_eof()
        return response

    client = await aiohttp_client(_app([web.get("/events", events)]))
    response = await client.get("/events")
    received = [event async for event in iter_sse(response.content)]
    assert received == [
        SSEEvent(str(index), "case", payload, None) for index, payload in enumerate(payloads)
    ]


def test_import_does_not_load_aiohttp_web() -> None:
    # The compatibility module (and every module it re-exports) must not drag the server in.
    code = "import sys, fusion.helper.aiohttp; print('aiohttp.web' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert result.stdout.strip() == b"False"
