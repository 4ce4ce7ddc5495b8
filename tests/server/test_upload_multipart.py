"""receive_upload with several parts: a file and form fields, typed, hashed, all-or-nothing.

Over a real server on loopback: aiohttp's client multipart for the well-formed
bodies, raw bytes (and a raw socket) for the hostile ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from fusion_testing.clock import eventually
from fusion_testing.fixtures_server import ServerFactory, server_config

from fusion.concept import Priority
from fusion.helper.http_envelope import json_response
from fusion.server import FusionServer
from fusion.server.upload import receive_upload

MAX_SIZE = 256 * 1024
MAX_FIELD = 1024
MAX_PARTS = 6
BOUNDARY = "fusion-test-boundary"


class SampleTags(msgspec.Struct):
    tags: list[str]
    source: str | None = None


class SampleFields(msgspec.Struct, kw_only=True):
    """What a sample service's upload carries beside the file."""

    comment: str
    priority: Priority = Priority.LOW
    retention_days: int = 30
    metadata: SampleTags


def _summary(upload: Any) -> dict[str, Any]:
    return {
        "name": upload.path.name,
        "size": upload.size,
        "filename": upload.filename,
        "content_type": upload.content_type,
        "sha256": upload.sha256,
        "digests": dict(upload.digests),
        "fields": msgspec.to_builtins(upload.fields),
    }


@pytest.fixture
async def upload_server(tmp_path: Path, fusion_server: ServerFactory) -> tuple[str, Path]:
    uploads = tmp_path / "uploads"

    async def typed(request: web.Request) -> web.Response:
        upload = await receive_upload(
            request,
            uploads,
            max_size=MAX_SIZE,
            fields=SampleFields,
            hash_algorithms=("sha1", "md5"),
            max_field_size=MAX_FIELD,
            max_parts=MAX_PARTS,
        )
        # Typed: mypy knows upload.fields is a SampleFields.
        assert isinstance(upload.fields, SampleFields)
        return json_response(_summary(upload))

    async def untyped(request: web.Request) -> web.Response:
        upload = await receive_upload(
            request, uploads, max_size=MAX_SIZE, max_field_size=MAX_FIELD, max_parts=MAX_PARTS
        )
        return json_response(_summary(upload))

    server = FusionServer(server_config(tmp_path / "data", server={"body_timeout": 30.0}))
    server.add_routes([web.post("/typed", typed), web.post("/untyped", untyped)])
    running = await fusion_server(server)
    return running.url, uploads


def _listing(directory: Path) -> list[str]:
    # Hidden names included: a staging file left behind is a failure too.
    return sorted(os.listdir(directory)) if directory.exists() else []


async def _post(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, **kwargs) as response:
        return response.status, await response.json()


def _metadata() -> str:
    return json.dumps({"tags": ["ransomware", "host-42"], "source": "edr"})


def _form(payload: bytes | AsyncIterator[bytes], *, file_first: bool) -> aiohttp.FormData:
    form = aiohttp.FormData(quote_fields=False)

    def add_fields() -> None:
        form.add_field("comment", "from the EDR quarantine")
        form.add_field("priority", "high")
        form.add_field("retention_days", "7")
        form.add_field("metadata", _metadata(), content_type="application/json")

    if not file_first:
        add_fields()
    form.add_field("file", payload, filename="sample.bin", content_type="application/x-dosexec")
    if file_first:
        add_fields()
    return form


@pytest.mark.parametrize("file_first", [True, False], ids=["file-first", "fields-first"])
async def test_file_and_typed_fields_in_any_order(
    upload_server: tuple[str, Path], file_first: bool
) -> None:
    url, uploads = upload_server
    payload = os.urandom(MAX_SIZE)
    status, envelope = await _post(f"{url}/typed", data=_form(payload, file_first=file_first))
    assert status == 200, envelope
    assert envelope["data"] == {
        "name": "sample.bin",
        "size": MAX_SIZE,
        "filename": "sample.bin",
        "content_type": "application/x-dosexec",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "digests": {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "sha1": hashlib.sha1(payload).hexdigest(),  # noqa: S324 - checking a digest
            "md5": hashlib.md5(payload).hexdigest(),  # noqa: S324 - checking a digest
        },
        "fields": {
            "comment": "from the EDR quarantine",
            "priority": "high",
            "retention_days": 7,
            "metadata": {"tags": ["ransomware", "host-42"], "source": "edr"},
        },
    }
    assert (uploads / "sample.bin").read_bytes() == payload
    assert _listing(uploads) == ["sample.bin"]


async def test_untyped_fields_are_the_texts(upload_server: tuple[str, Path]) -> None:
    url, uploads = upload_server
    status, envelope = await _post(f"{url}/untyped", data=_form(b"MZ\x90\x00", file_first=True))
    assert status == 200, envelope
    assert envelope["data"]["fields"] == {
        "comment": "from the EDR quarantine",
        "priority": "high",
        "retention_days": "7",
        "metadata": _metadata(),
    }
    assert envelope["data"]["digests"] == {"sha256": hashlib.sha256(b"MZ\x90\x00").hexdigest()}
    assert _listing(uploads) == ["sample.bin"]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("priority", "urgent", "$.priority"),
        ("retention_days", "seven", "$.retention_days"),
        ("metadata", '{"tags": "not-a-list"}', "$.metadata.tags"),
        ("metadata", "{not json", "$.metadata"),
    ],
)
async def test_fields_that_do_not_fit_the_struct_are_400_and_leave_nothing(
    upload_server: tuple[str, Path], field: str, value: str, reason: str
) -> None:
    url, uploads = upload_server
    form = aiohttp.FormData(quote_fields=False)
    values = {
        "comment": "c",
        "priority": "low",
        "retention_days": "1",
        "metadata": _metadata(),
        field: value,
    }
    form.add_field("file", b"data", filename="sample.bin")
    for name, text in values.items():
        form.add_field(name, text)
    status, envelope = await _post(f"{url}/typed", data=form)
    assert status == 400, envelope
    assert envelope["status"] == 400
    assert envelope["message"].startswith("invalid upload fields")
    assert reason in envelope["message"]
    assert _listing(uploads) == []


async def test_a_missing_required_field_is_400(upload_server: tuple[str, Path]) -> None:
    url, uploads = upload_server
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", b"data", filename="sample.bin")
    form.add_field("comment", "no metadata")
    status, envelope = await _post(f"{url}/typed", data=form)
    assert (status, envelope["status"]) == (400, 400)
    assert "metadata" in envelope["message"]
    assert _listing(uploads) == []


async def test_oversized_file_is_413_and_leaves_no_staging_file(
    upload_server: tuple[str, Path],
) -> None:
    url, uploads = upload_server

    async def chunks() -> AsyncIterator[bytes]:
        # Chunked, no Content-Length: the cap counts what actually arrives.
        for _ in range(2 * MAX_SIZE // 4096):
            yield b"x" * 4096

    status, envelope = await _post(f"{url}/untyped", data=_form(chunks(), file_first=False))
    assert (status, envelope["status"]) == (413, 413)
    assert str(MAX_SIZE) in envelope["message"]
    assert _listing(uploads) == []


def _raw_body(*parts: tuple[str, str | None, bytes], close: bool = True) -> bytes:
    """A multipart body from (name, filename, data) parts, written by hand."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    if close:
        out += f"--{BOUNDARY}--\r\n".encode()
    return out


async def _post_raw(url: str, body: bytes, content_type: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": content_type or f"multipart/form-data; boundary={BOUNDARY}"}
    return await _post(url, data=body, headers=headers)


_FILE = ("file", "sample.bin", b"MZ" * 100)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        # A field past its cap, after the file: the file must not stay.
        (_raw_body(_FILE, ("comment", None, b"c" * (MAX_FIELD + 1))), 413, "'comment' too large"),
        (_raw_body(_FILE, _FILE), 400, "'file' given twice"),
        (_raw_body(("comment", None, b"a"), _FILE, ("comment", None, b"b")), 400, "twice"),
        (_raw_body(*[(f"f{i}", None, b"v") for i in range(MAX_PARTS)], _FILE), 413, "parts"),
        (_raw_body(("comment", None, b"only a field")), 400, "'file' is missing"),
        (_raw_body(_FILE, ("", None, b"nameless")), 400, "no name"),
        (_raw_body(_FILE, ("comment", None, b"\xff\xfe")), 400, "not UTF-8"),
        # The closing boundary never comes.
        (_raw_body(_FILE, close=False)[:-2], 400, "malformed multipart"),
        (b"no boundary anywhere in this body", 400, ""),
    ],
    ids=[
        "field-over-cap",
        "duplicate-file",
        "duplicate-field",
        "too-many-parts",
        "missing-file",
        "nameless-part",
        "field-not-utf8",
        "unterminated",
        "garbage",
    ],
)
async def test_hostile_bodies_are_refused_and_leave_nothing(
    upload_server: tuple[str, Path], body: bytes, status: int, message: str
) -> None:
    url, uploads = upload_server
    for route in ("/untyped", "/typed"):
        answer, envelope = await _post_raw(url + route, body)
        assert (answer, envelope["status"]) == (status, status), envelope
        assert message in envelope["message"]
        assert _listing(uploads) == []


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("application/json", 400), ("text/plain", 400), ("application/octet-stream", 400)],
)
async def test_a_body_that_is_not_multipart_is_refused(
    upload_server: tuple[str, Path], content_type: str, status: int
) -> None:
    url, uploads = upload_server
    answer, envelope = await _post_raw(f"{url}/untyped", _raw_body(_FILE), content_type)
    assert (answer, envelope["status"]) == (status, status)
    assert "multipart/form-data" in envelope["message"]
    assert _listing(uploads) == []


async def test_an_encoded_body_is_415(upload_server: tuple[str, Path]) -> None:
    url, uploads = upload_server
    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Encoding": "gzip",
    }
    answer, envelope = await _post(f"{url}/untyped", data=_raw_body(_FILE), headers=headers)
    assert (answer, envelope["status"]) == (415, 415)
    assert _listing(uploads) == []


@pytest.mark.parametrize("fields_first", [True, False])
async def test_a_client_that_goes_away_mid_upload_leaves_nothing(
    upload_server: tuple[str, Path], fields_first: bool
) -> None:
    url, uploads = upload_server
    port = int(url.rsplit(":", 1)[1])
    head = _raw_body(("comment", None, b"before"), close=False) if fields_first else b""
    head += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"\r\n\r\n'
    ).encode()
    body = head + b"y" * 50_000
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /untyped HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n".encode()
        # Announces more than is ever sent.
        + f"Content-Length: {len(body) + 100_000}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await eventually(lambda: bool(_listing(uploads)), "the upload to start writing")
    writer.close()
    await writer.wait_closed()
    await eventually(lambda: not _listing(uploads), "the staging files to be removed")
