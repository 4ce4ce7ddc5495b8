"""FusionClient.upload: a file streamed from disk with progress, typed form fields, typed answers.

Against a real FusionServer on loopback whose own route calls
``receive_upload(request, directory, max_size=..., fields=SampleFields)``.
"""

from __future__ import annotations

import hashlib
import itertools
import mimetypes
import os
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import msgspec
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import ROBOT_KEY, ServerFactory, server_config

from fusion.client import (
    FusionAPIError,
    FusionClient,
    FusionClientConfig,
    FusionClientError,
    TransferProgress,
)
from fusion.client.progress import ProgressMeter
from fusion.client.upload import form_fields
from fusion.concept import Concept, Priority
from fusion.helper.http_envelope import json_response
from fusion.server import FusionServer
from fusion.server.appkeys import AUTH
from fusion.server.upload import receive_upload

MAX_SIZE = 64 * 1024 * 1024
SMALL_MAX_SIZE = 64 * 1024
CHUNK = 256 * 1024


class SampleSource(msgspec.Struct, kw_only=True):
    host: str
    seen: datetime


class SampleFields(msgspec.Struct, kw_only=True):
    """What the service's upload route reads beside the file."""

    comment: str
    label: str = ""
    priority: Priority = Priority.LOW
    retention_days: int = 30
    quarantined: bool = False
    tags: list[str] = msgspec.field(default_factory=list)
    case_guid: UUID | None = None
    source: SampleSource | None = None


class Receipt(Concept, kw_only=True):
    """The service's answer, as its client decodes it."""

    username: str
    name: str
    size: int
    sha256: str
    fields: SampleFields


@pytest.fixture
async def service(tmp_path: Path, fusion_server: ServerFactory) -> tuple[str, Path]:
    uploads = tmp_path / "uploads"

    async def upload(request: web.Request) -> web.Response:
        identity = await request.app[AUTH].authenticate(request)
        max_size = SMALL_MAX_SIZE if request.query.get("small") == "true" else MAX_SIZE
        received = await receive_upload(request, uploads, max_size=max_size, fields=SampleFields)
        return json_response(
            {
                "username": identity.username,
                "name": received.path.name,
                "size": received.size,
                "sha256": received.sha256,
                "fields": received.fields,
                "content_type": received.content_type,  # a key the client's Receipt ignores
                "content_length": request.content_length,
                "transfer_encoding": request.headers.get("Transfer-Encoding"),
            }
        )

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "/api/samples"})

    server = FusionServer(server_config(tmp_path / "data"))
    server.add_routes([web.post("/api/samples", upload), web.post("/api/moved", moved)])
    running = await fusion_server(server)
    return running.url, uploads


def _file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 1024 * 1024))
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


async def test_upload_streams_the_file_with_progress_and_typed_fields(
    service: tuple[str, Path], tmp_path: Path
) -> None:
    url, uploads = service
    size = 24 * 1024 * 1024 + 13
    source = tmp_path / "memory.dmp"
    sha256 = _file(source, size)
    fields = SampleFields(
        comment="42",  # a string that looks like JSON stays a string
        label='{"not": "json"}',
        priority=Priority.HIGH,
        retention_days=7,
        quarantined=True,
        tags=["ransomware", "host-42"],
        case_guid=uuid4(),
        source=SampleSource(host="host-42", seen=datetime(2026, 11, 28, 4, 0, tzinfo=UTC)),
    )
    steps: list[TransferProgress] = []
    config = FusionClientConfig(api_url=url, api_key=ROBOT_KEY)
    async with FusionClient(config) as client:
        tracemalloc.start()
        try:
            receipt = await client.upload(
                "/api/samples",
                source,
                fields=fields,
                concept_type=Receipt,
                on_progress=steps.append,
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert receipt.username == "robot"
    assert receipt.name == "memory.dmp"
    assert receipt.size == size
    assert receipt.sha256 == sha256
    assert receipt.fields == fields
    assert (uploads / "memory.dmp").stat().st_size == size
    # Streamed: neither side (both in this process) ever held the file in memory.
    assert peak < size // 4, f"peak {peak} bytes for a {size}-byte upload"
    # Progress: from 0, monotonic, in chunks no larger than one read, ending at the size.
    assert steps[0].done == 0
    assert steps[-1].done == size
    assert len(steps) > size // CHUNK
    assert all(step.total == size for step in steps)
    assert all(b.done - a.done <= CHUNK for a, b in itertools.pairwise(steps))
    assert [step.done for step in steps] == sorted(step.done for step in steps)
    assert steps[-1].eta == 0.0
    assert steps[-1].fraction == 1.0
    assert steps[-1].rate > 0


async def test_upload_with_mapping_fields_and_name(
    service: tuple[str, Path], tmp_path: Path
) -> None:
    url, uploads = service
    source = tmp_path / "x.bin"
    source.write_bytes(b"MZ" + b"\0" * 1000)
    config = FusionClientConfig(api_url=url, api_key=ROBOT_KEY)
    async with FusionClient(config) as client:
        answer = await client.upload(
            "/api/samples",
            source,
            filename="sample.exe",
            fields={"comment": "from the EDR", "retention_days": 3, "tags": ["a"]},
        )
    # Without concept_type: builtins, every key the server sent.
    assert answer["name"] == "sample.exe"
    assert answer["content_type"] == (
        mimetypes.guess_type("sample.exe")[0] or "application/octet-stream"
    )
    assert answer["fields"]["retention_days"] == 3
    assert answer["fields"]["tags"] == ["a"]
    assert answer["fields"]["priority"] == "low"
    # The size is known in advance: a Content-Length, not a chunked body.
    assert answer["transfer_encoding"] is None
    assert answer["content_length"] > 1002
    assert _listing(uploads) == ["sample.exe"]


async def test_upload_follows_a_307_sending_the_file_again(
    service: tuple[str, Path], tmp_path: Path
) -> None:
    url, uploads = service
    size = 2 * 1024 * 1024 + 1
    source = tmp_path / "moved.bin"
    sha256 = _file(source, size)
    steps: list[TransferProgress] = []
    config = FusionClientConfig(api_url=url, api_key=ROBOT_KEY)
    async with FusionClient(config) as client:
        receipt = await client.upload(
            "/api/moved",
            source,
            fields=SampleFields(comment="moved"),
            concept_type=Receipt,
            on_progress=steps.append,
        )
    assert (receipt.username, receipt.size, receipt.sha256) == ("robot", size, sha256)
    # However much of the first attempt went out, progress restarts and ends at the size.
    assert steps[-1].done == size
    assert all(0 <= step.done <= size for step in steps)
    assert _listing(uploads) == ["moved.bin"]


async def test_upload_too_large_is_a_typed_413_and_stores_nothing(
    service: tuple[str, Path], tmp_path: Path
) -> None:
    url, uploads = service
    source = tmp_path / "big.bin"
    _file(source, 4 * 1024 * 1024)
    config = FusionClientConfig(api_url=url, api_key=ROBOT_KEY)
    async with FusionClient(config) as client:
        with pytest.raises(FusionAPIError) as caught:
            await client.upload(
                "/api/samples",
                source,
                params={"small": True},
                fields=SampleFields(comment="too big"),
            )
        assert caught.value.status == 413
        assert "too large" in caught.value.message
        # The connection the server closed is not reused: the next call works.
        small = tmp_path / "small.bin"
        small.write_bytes(b"ok")
        receipt = await client.upload(
            "/api/samples", small, fields=SampleFields(comment="ok"), concept_type=Receipt
        )
    assert receipt.size == 2
    assert _listing(uploads) == ["small.bin"]


async def test_upload_refusals_are_typed_errors(service: tuple[str, Path], tmp_path: Path) -> None:
    url, uploads = service
    source = tmp_path / "s.bin"
    source.write_bytes(b"data")
    async with FusionClient(FusionClientConfig(api_url=url)) as client:
        # No credentials: the service's route answers 401.
        with pytest.raises(FusionAPIError) as caught:
            await client.upload("/api/samples", source, fields=SampleFields(comment="x"))
        assert caught.value.status == 401
    async with FusionClient(FusionClientConfig(api_url=url, api_key=ROBOT_KEY)) as client:
        # A field the server's Struct refuses: 400 naming it.
        with pytest.raises(FusionAPIError) as caught:
            await client.upload(
                "/api/samples", source, fields={"comment": "x", "retention_days": "soon"}
            )
        assert caught.value.status == 400
        assert "retention_days" in caught.value.message
        # Missing local file, or a directory: a client error before anything is sent.
        with pytest.raises(FusionClientError, match="cannot upload"):
            await client.upload("/api/samples", tmp_path / "missing.bin")
        with pytest.raises(FusionClientError, match="not a regular file"):
            await client.upload("/api/samples", tmp_path)
    assert _listing(uploads) == []


def test_form_fields_encoding() -> None:
    guid = uuid4()
    fields = SampleFields(
        comment="true",
        priority=Priority.MEDIUM,
        retention_days=0,
        tags=[],
        case_guid=guid,
        source=SampleSource(host="h", seen=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    )
    assert form_fields(fields) == {
        "comment": "true",
        "label": "",
        "priority": "medium",
        "retention_days": "0",
        "quarantined": "false",
        "tags": "[]",
        "case_guid": str(guid),
        "source": '{"host":"h","seen":"2026-01-02T03:04:05Z"}',
    }
    # None is left out (the server's default applies).
    assert "case_guid" not in form_fields(SampleFields(comment="c"))
    with pytest.raises(TypeError):
        form_fields([1, 2])  # type: ignore[arg-type]


def test_progress_meter_restarts_when_a_body_is_sent_again() -> None:
    steps: list[TransferProgress] = []
    meter = ProgressMeter(steps.append, 100)
    meter.start()
    meter.advance(60)
    meter.start()  # a redirect (307) or a retry sends the body from its start
    meter.advance(100)
    assert [step.done for step in steps] == [0, 60, 0, 100]
    assert steps[-1].eta == 0.0
    assert steps[1].total == 100
    assert steps[1].fraction == 0.6
    # Unknown total: no fraction, no ETA.
    unknown: list[TransferProgress] = []
    meter = ProgressMeter(unknown.append, None)
    meter.start()
    meter.advance(5)
    assert (unknown[-1].done, unknown[-1].fraction, unknown[-1].eta) == (5, None, None)
