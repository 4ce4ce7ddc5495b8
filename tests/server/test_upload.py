"""receive_upload: multipart to disk over a real socket, capped and atomic."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from fusion.helper.http_envelope import envelope_middleware, json_response
from fusion.server.upload import receive_upload

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

LIMIT = 64 * 1024


def _app(directory: Path) -> web.Application:
    async def upload(request: web.Request) -> web.Response:
        name = request.query.get("name")
        overwrite = request.query.get("overwrite") == "1"
        uploaded = await receive_upload(
            request, directory, name, max_size=LIMIT, overwrite=overwrite
        )
        return json_response(
            {"name": uploaded.path.name, "size": uploaded.size, "claimed": uploaded.filename}
        )

    # A small client_max_size, as servers set for JSON bodies: uploads have their own cap.
    app = web.Application(middlewares=[envelope_middleware()], client_max_size=1024)
    app.router.add_post("/upload", upload)
    return app


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    return await aiohttp_client(_app(tmp_path / "uploads"))


def _form(data: bytes | AsyncIterator[bytes], filename: str = "sample.bin") -> aiohttp.FormData:
    # Raw names as browsers send them (aiohttp would percent-encode them otherwise).
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("note", "ignored")
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return form


def _listing(tmp_path: Path) -> list[str]:
    directory = tmp_path / "uploads"
    return sorted(os.listdir(directory)) if directory.exists() else []


async def test_upload_lands_under_the_client_name(client: Client, tmp_path: Path) -> None:
    payload = os.urandom(LIMIT)
    async with client.post("/upload", data=_form(payload, "dir/../report 1.bin")) as response:
        assert response.status == 200
        body = await response.json()
    assert body["data"] == {"name": "report 1.bin", "size": LIMIT, "claimed": "dir/../report 1.bin"}
    assert (tmp_path / "uploads" / "report 1.bin").read_bytes() == payload
    assert _listing(tmp_path) == ["report 1.bin"]


async def test_upload_under_a_service_chosen_name(client: Client, tmp_path: Path) -> None:
    async with client.post("/upload?name=data", data=_form(b"abc", "whatever")) as response:
        assert response.status == 200
    assert _listing(tmp_path) == ["data"]


async def test_oversized_upload_is_413_and_leaves_nothing(client: Client, tmp_path: Path) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # Streamed without Content-Length: the cap counts the bytes actually received.
        for _ in range(40):
            yield b"x" * 4096

    async with client.post("/upload", data=_form(chunks())) as response:
        assert response.status == 413
        body = await response.json()
        assert body["status"] == 413
        assert str(LIMIT) in body["message"]
    assert _listing(tmp_path) == []


async def test_existing_file_is_kept_unless_overwrite(client: Client, tmp_path: Path) -> None:
    async with client.post("/upload", data=_form(b"first", "a.txt")) as response:
        assert response.status == 200
    async with client.post("/upload", data=_form(b"second", "a.txt")) as response:
        assert response.status == 409
    assert (tmp_path / "uploads" / "a.txt").read_bytes() == b"first"
    async with client.post("/upload?overwrite=1", data=_form(b"third", "a.txt")) as response:
        assert response.status == 200
    assert (tmp_path / "uploads" / "a.txt").read_bytes() == b"third"
    assert _listing(tmp_path) == ["a.txt"]


@pytest.mark.parametrize("filename", ["..", ".", "dir/", " . ", "\u202e\u200b", "a/.."])
async def test_unusable_client_names_are_400(client: Client, tmp_path: Path, filename: str) -> None:
    async with client.post("/upload", data=_form(b"abc", filename)) as response:
        assert response.status == 400
        body = await response.json()
        assert body["status"] == 400
        assert body["message"].startswith("unusable file name")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize(
    ("filename", "saved"),
    [
        # Hidden, too long, bidi-spoofed, reserved on Windows: saved under the one safe form.
        (".hidden", "hidden"),
        ("x" * 300 + ".txt", "x" * 251 + ".txt"),
        ("report\u202egnp.exe", "reportgnp.exe"),
        ("CON.txt", "_CON.txt"),
        ('a:b?"c".txt', "a_b__c_.txt"),
        ("C:\\Users\\me\\report.pdf", "report.pdf"),
    ],
)
async def test_hostile_client_names_are_made_safe(
    client: Client, tmp_path: Path, filename: str, saved: str
) -> None:
    async with client.post("/upload", data=_form(b"abc", filename)) as response:
        assert response.status == 200, await response.text()
        data = (await response.json())["data"]
    assert data == {"name": saved, "size": 3, "claimed": filename}
    assert _listing(tmp_path) == [saved]


async def test_unusable_service_name_is_400(client: Client, tmp_path: Path) -> None:
    # Refused before the body is read: nothing is written.
    async with client.post("/upload?name=..", data=_form(b"abc")) as response:
        assert response.status == 400
        assert (await response.json())["message"] == "unusable file name '..'"
    assert _listing(tmp_path) == []


async def test_not_multipart_or_missing_field_is_400(client: Client, tmp_path: Path) -> None:
    async with client.post("/upload", json={"file": "abc"}) as response:
        assert response.status == 400
    form = aiohttp.FormData()
    form.add_field("other", b"abc", filename="a")
    async with client.post("/upload", data=form) as response:
        assert response.status == 400
        assert "file" in (await response.json())["message"]
    assert _listing(tmp_path) == []


async def test_aborted_upload_leaves_nothing(client: Client, tmp_path: Path) -> None:
    boundary = "b0undary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="cut.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + b"y" * 20_000
    _reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    # Announce more than is sent, then go away mid-upload.
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
        + f"Content-Length: {len(body) + 50_000}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    for _ in range(100):
        if _listing(tmp_path):
            break  # the staging file exists: the upload is in progress
        await asyncio.sleep(0.01)
    assert _listing(tmp_path), "the upload never started"
    writer.close()
    await writer.wait_closed()
    for _ in range(200):
        if not _listing(tmp_path):
            break
        await asyncio.sleep(0.01)
    assert _listing(tmp_path) == []
