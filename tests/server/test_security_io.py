"""Slow, broken and vanished clients over real loopback sockets (security issue: 5, 9, 12).

Partial bodies, aborted connections and raw header bytes go through asyncio
streams or plain sockets, so the server sees exactly what a hostile client sends.
Timeouts are set small in the server and every wait here is for a condition
(an answer, an end of stream, a log record) under a generous overall limit.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import msgspec
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    TEST_USERS,
    HTTPSessionFactory,
    ServerFactory,
    ServerProcess,
    call,
    server_config,
    server_config_dict,
    write_config,
)

from fusion.helper.http_envelope import json_response
from fusion.server.app import FusionServer
from fusion.server.config import ServerConfig
from fusion.server.download.api import DOWNLOADS
from fusion.server.upload import receive_upload

WAIT = 30.0  # overall limit of every wait for a condition; never reached when all is well


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def head(method: str, path: str, *headers: str, length: int | None = None) -> bytes:
    # Connection: close, so that reading the answer until the server closes does
    # not wait out the keep-alive timeout.
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(port: int, raw: bytes, *, source: str = "127.0.0.1") -> bytes:
    """Send ``raw`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


def envelope_of(answer: bytes) -> tuple[int, dict[str, Any]]:
    status_line, _, rest = answer.partition(b"\r\n")
    status = int(status_line.split()[1])
    body = rest.partition(b"\r\n\r\n")[2]
    envelope: dict[str, Any] = msgspec.json.decode(body)
    assert envelope["status"] == status, envelope
    return status, envelope


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def errors_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def cases(session: Any) -> list[Any]:
    status, body = await call(
        session, "GET", "/api/cases", headers={"X-Fusion-API-Token": ROBOT_KEY}
    )
    assert status == 200, body
    return sorted(body["data"], key=lambda case: case["guid"])


async def start_with_access_log(
    server: FusionServer, logger: logging.Logger
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(server.build(), access_log=logger)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return runner, port


LOGIN_BODY = msgspec.json.encode(
    {"data": {"username": "alice", "password": TEST_USERS["alice"][0]}}
)


@pytest.fixture
async def io_server(tmp_path: Path, fusion_server: ServerFactory) -> tuple[int, FusionServer, Path]:
    """A server with every API, an upload route and a download preparation route."""
    uploads = tmp_path / "uploads"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    config = server_config(
        tmp_path / "data",
        server={"body_timeout": 1.0, "keepalive_timeout": 1.0},
        download={"roots": [str(downloads)]},
    )
    server = FusionServer(config)

    async def upload(request: web.Request) -> web.Response:
        uploaded = await receive_upload(request, uploads, max_size=1024 * 1024)
        return json_response({"name": uploaded.path.name})

    async def prepare(request: web.Request) -> web.Response:
        key = await request.app[DOWNLOADS].prepare(
            request.query["path"], request.query.get("name", "file")
        )
        return json_response(key)

    server.add_routes([web.post("/upload", upload), web.get("/prepare", prepare)])
    running = await fusion_server(server)
    return running.port, server, tmp_path


# --------------------------------------------------------------------------
# 5. slow clients
# --------------------------------------------------------------------------


def test_server_defaults_bound_every_wait() -> None:
    defaults = ServerConfig()
    assert defaults.shutdown_timeout <= 10
    assert defaults.body_timeout <= 60
    assert defaults.keepalive_timeout <= 75
    assert defaults.max_connections < 1024  # under the usual ulimit -n


@pytest.mark.parametrize(
    ("path", "token"),
    [("/api/auth/login", None), ("/api/case", ROBOT_KEY)],
    ids=["login", "case-create"],
)
async def test_partial_json_body_gets_408_and_the_connection_closes(
    io_server: tuple[int, FusionServer, Path], path: str, token: str | None
) -> None:
    port, _, _ = io_server
    headers = ["Content-Type: application/json"]
    if token is not None:
        headers.append(f"X-Fusion-API-Token: {token}")
    raw = head("POST", path, *headers, length=1000) + b'{"data": '
    # read() returns only once the server closed the connection after its answer.
    status, envelope = envelope_of(await exchange(port, raw))
    assert status == 408
    assert "1 s" in envelope["message"]


async def test_stalled_upload_gets_408_and_leaves_nothing(
    io_server: tuple[int, FusionServer, Path],
) -> None:
    port, _, tmp_path = io_server
    part = (
        b'--BB\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
        + b"x" * 100
    )
    raw = (
        head("POST", "/upload", "Content-Type: multipart/form-data; boundary=BB", length=10_000)
        + part
    )
    status, _ = envelope_of(await exchange(port, raw))
    assert status == 408
    assert list((tmp_path / "uploads").iterdir()) == []


async def test_partial_headers_are_closed_after_keepalive_timeout(
    io_server: tuple[int, FusionServer, Path],
) -> None:
    port, _, _ = io_server
    # No request ever completes: the server closes without answering.
    assert await exchange(port, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a") == b""


def _config_file(tmp_path: Path, **server: Any) -> Path:
    config = server_config_dict(tmp_path / "data", server={"access_log": False, **server})
    return write_config(tmp_path / "fusion.yml", config)


def _refused(port: int, source: str) -> bool:
    """True when the server closes a new connection from ``source`` without answering."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=WAIT, source_address=(source, 0)
    ) as sock:
        try:
            sock.sendall(head("GET", "/api/info"))
            return sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


async def _hold(port: int, source: str, count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections from ``source``, each holding a partial login body.

    Each one is known to be counted by the server before the next is opened:
    ``Expect: 100-continue`` makes the server answer ``100 Continue`` once it
    handles the request (a connection refused at the cap gets EOF instead).
    """
    writers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writers.append(writer)
        writer.write(
            head(
                "POST",
                "/api/auth/login",
                "Content-Type: application/json",
                "Expect: 100-continue",
                length=1000,
            )
        )
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        writer.write(b'{"data": ')
        await writer.drain()
    return writers


async def test_connection_caps_per_address_and_in_total(
    tmp_path: Path, http_sessions: HTTPSessionFactory
) -> None:
    """An address holding partial bodies is capped; a user elsewhere still logs in."""
    config = _config_file(
        tmp_path,
        max_connections=8,
        max_connections_per_address=5,
        body_timeout=600,
        keepalive_timeout=600,
    )
    with ServerProcess(["--config", str(config)], cwd=tmp_path) as process:
        attacker = await _hold(process.port, "127.0.0.1", 5)
        # Every held connection is counted: the next one from that address is refused.
        assert _refused(process.port, "127.0.0.1")
        # Total cap: 5 + 3 more from a second address fill the server.
        others = await _hold(process.port, "127.0.0.2", 3)
        assert _refused(process.port, "127.0.0.3")
        for writer in others:
            writer.close()
        await wait_for(lambda: not _refused(process.port, "127.0.0.2"), "the places of .2")
        # While the attacker still holds its address's cap, a real user from
        # another address logs in.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), force_close=True)
        async with http_sessions(process.url, connector=connector) as session:
            status, body = await call(
                session, "POST", "/api/auth/login", json=msgspec.json.decode(LOGIN_BODY)
            )
            assert status == 200, body
        assert _refused(process.port, "127.0.0.1")
        # Closed connections free their places.
        for writer in attacker:
            writer.close()
        await wait_for(lambda: not _refused(process.port, "127.0.0.1"), "a freed place")


async def test_sigterm_with_pending_partial_bodies_exits_within_the_grace(
    tmp_path: Path, http_sessions: HTTPSessionFactory
) -> None:
    config = _config_file(tmp_path, shutdown_timeout=1, body_timeout=600)
    process = ServerProcess(["--config", str(config)], cwd=tmp_path).start()
    try:
        writers = await _hold(process.port, "127.0.0.1", 20)
        # A complete request after them: its answer means the server has read theirs.
        async with http_sessions(process.url) as session:
            assert (await call(session, "GET", "/api/info"))[0] == 200
        started = time.monotonic()
        # stop() waits WAIT seconds before a SIGKILL; aiohttp's default grace was 60 s.
        assert process.stop(timeout=WAIT) == 0, process.output
        assert time.monotonic() - started < WAIT
        for writer in writers:
            writer.close()
    finally:
        process.stop()


# --------------------------------------------------------------------------
# 9. bad input: a clean 4xx, or one DEBUG line for a vanished client
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/auth/login"), ("POST", "/api/case"), ("PUT", "/api/case/{guid}")],
    ids=["login", "create", "update"],
)
@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_content_encoding_that_does_not_decode_is_400(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    store: str,
) -> None:
    store_url = "memory://"
    if store == "redis":
        store_url = request.getfixturevalue("redis_server").url
    running = await fusion_server(server_config(tmp_path, shared_store={"url": store_url}))
    session = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, body = await call(session, "POST", "/api/case", json={"name": "kept"})
    assert status == 200, body
    guid = body["data"]["guid"]
    before = await cases(session)
    payload = LOGIN_BODY if "login" in path else b'{"name": "changed"}'
    for encoding, data in [
        ("gzip", payload),
        ("deflate", payload),
        ("gzip", b"\x1f\x8b" + bytes(range(256))),
        # One byte, in the same read as the headers: aiohttp's parser refused it
        # in plain text before any middleware, while it decompressed bodies.
        ("deflate", b"\x00"),
        ("gzip", gzip.compress(payload)[:-6]),  # truncated
    ]:
        caplog.clear()
        raw = head(
            method,
            path.format(guid=guid),
            "Content-Type: application/json",
            f"Content-Encoding: {encoding}",
            f"X-Fusion-API-Token: {ROBOT_KEY}",
            length=len(data),
        )
        status, envelope = envelope_of(await exchange(running.port, raw + data))
        assert status == 400, envelope
        assert "content-encoding" in envelope["message"].lower() or "body" in envelope["message"]
        assert errors_in(caplog) == []
    assert await cases(session) == before


async def test_encoded_bodies_are_decoded_capped_or_refused(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    running = await fusion_server(server_config(tmp_path))
    session = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    plain = b'{"name": "compressed"}'
    for encoding, data in [("gzip", gzip.compress(plain)), ("deflate", zlib.compress(plain))]:
        raw = head(
            "POST",
            "/api/case",
            "Content-Type: application/json",
            f"Content-Encoding: {encoding}",
            f"X-Fusion-API-Token: {ROBOT_KEY}",
            length=len(data),
        )
        status, envelope = envelope_of(await exchange(running.port, raw + data))
        assert (status, envelope["data"]["name"]) == (200, "compressed"), envelope
    # 10 MB of spaces in 10 kB: inflating stops one byte past the 1 MiB cap.
    bomb = gzip.compress(b"{" + b" " * 10_000_000 + b"}")
    raw = head(
        "POST",
        "/api/case",
        "Content-Type: application/json",
        "Content-Encoding: gzip",
        f"X-Fusion-API-Token: {ROBOT_KEY}",
        length=len(bomb),
    )
    status, envelope = envelope_of(await exchange(running.port, raw + bomb))
    assert status == 413, envelope
    for encoding in ("br", "zstd", "gzip, gzip", "compress"):
        raw = head(
            "POST",
            "/api/case",
            "Content-Type: application/json",
            f"Content-Encoding: {encoding}",
            f"X-Fusion-API-Token: {ROBOT_KEY}",
            length=len(plain),
        )
        status, envelope = envelope_of(await exchange(running.port, raw + plain))
        assert (status, envelope["status"]) == (415, 415), (encoding, envelope)
    assert [case["name"] for case in await cases(session)] == ["compressed", "compressed"]


async def test_client_closing_mid_body_is_one_debug_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fusion.helper.aiohttp")
    caplog.set_level(logging.DEBUG, logger="test.access")
    runner, port = await start_with_access_log(
        FusionServer(server_config(tmp_path)), logging.getLogger("test.access")
    )
    try:
        for path, token in [("/api/auth/login", None), ("/api/case", ROBOT_KEY)]:
            caplog.clear()
            headers = ["Content-Type: application/json"]
            if token:
                headers.append(f"X-Fusion-API-Token: {token}")
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head("POST", path, *headers, length=1000) + b'{"data": ')
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            await wait_for(
                lambda: any(r.name == "test.access" for r in caplog.records), "the access log"
            )
            access = [r.getMessage() for r in caplog.records if r.name == "test.access"]
            assert len(access) == 1, access
            assert '" 500 ' not in access[0], access
            debug = [r for r in caplog.records if r.name.startswith("fusion")]
            assert [(r.levelno, r.getMessage()) for r in debug] == [
                (logging.DEBUG, f"client closed the connection: POST {path}")
            ]
            assert not any(r.exc_info for r in caplog.records)
            assert errors_in(caplog) == []
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "part_headers",
    [
        b'Content-Disposition: form-data; name="file"; filename="a\x00b.txt"',
        b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\nX-Big: ' + b"x" * 9000,
        b'Content-Disposition: form-data; name="file"; filename="' + b"y" * 9000 + b'"',
    ],
    ids=["nul-filename", "long-part-header", "long-filename"],
)
async def test_odd_multipart_headers_are_400(
    io_server: tuple[int, FusionServer, Path],
    caplog: pytest.LogCaptureFixture,
    part_headers: bytes,
) -> None:
    port, _, tmp_path = io_server
    body = b"--BB\r\n" + part_headers + b"\r\n\r\nhello\r\n--BB--\r\n"
    raw = head(
        "POST", "/upload", "Content-Type: multipart/form-data; boundary=BB", length=len(body)
    )
    status, envelope = envelope_of(await exchange(port, raw + body))
    assert status == 400, envelope
    assert errors_in(caplog) == []
    assert not (tmp_path / "uploads").exists() or list((tmp_path / "uploads").iterdir()) == []


async def test_prepare_of_a_path_with_nul_is_404(
    io_server: tuple[int, FusionServer, Path],
    http_sessions: HTTPSessionFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, _, tmp_path = io_server
    (tmp_path / "downloads" / "a").write_bytes(b"x")
    session = http_sessions(f"http://127.0.0.1:{port}")
    path = str(tmp_path / "downloads" / "a") + "\x00b"
    status, body = await call(session, "GET", "/prepare", params={"path": path})
    assert (status, body) == (404, {"status": 404, "message": "file not found"})
    assert errors_in(caplog) == []


# --------------------------------------------------------------------------
# 12. Content-Disposition without bidi controls
# --------------------------------------------------------------------------

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@pytest.mark.parametrize("control", list(BIDI))
async def test_download_name_loses_bidi_controls(
    io_server: tuple[int, FusionServer, Path], http_sessions: HTTPSessionFactory, control: str
) -> None:
    port, _, tmp_path = io_server
    (tmp_path / "downloads" / "payload").write_bytes(b"MZ")
    session = http_sessions(f"http://127.0.0.1:{port}")
    name = f"r\u00e9port{control}gnp.exe"
    status, body = await call(
        session,
        "GET",
        "/prepare",
        params={"path": str(tmp_path / "downloads" / "payload"), "name": name},
    )
    assert status == 200, body
    key = body["data"]
    async with session.get(f"/api/download/{key['guid']}/{key['token']}") as response:
        assert response.status == 200
        disposition = response.headers["Content-Disposition"]
    assert control not in unquote(disposition)
    assert "filename*=UTF-8''r%C3%A9portgnp.exe" in disposition, disposition
