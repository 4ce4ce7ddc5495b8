"""End to end with the real server application: events, downloads and TLS.

The framework's :class:`FusionServer` with the event and download APIs,
served on loopback sockets (plain and TLS) in the test's event loop, driven
by the client library and the ``fusion-client`` command. A small TCP relay
between client and server lets the test cut a live event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec
import pytest
from aiohttp import web
from fusion_testing.fixtures_cli import MainRunner
from fusion_testing.fixtures_server import ROBOT_KEY, server_config

from fusion.client import (
    FusionAPIError,
    FusionCaseAPIClient,
    FusionClient,
    FusionClientConfig,
    FusionConnectionError,
    FusionDownloadAPIClient,
    FusionEventAPIClient,
    FusionInfoAPIClient,
)
from fusion.client.cli import main
from fusion.concept import Case, Event
from fusion.helper.config import TLSConfig
from fusion.server.app import FusionServer
from fusion.server.download import FusionDownloadAPI

if TYPE_CHECKING:
    from fusion_testing.tls import TLSFiles


def service_with_events(data_dir: Path, download_root: Path) -> FusionServer:
    """The generic server with the event and download APIs, from their config sections."""
    return FusionServer(
        server_config(
            data_dir,
            event={"source": "e2e", "keepalive": 0.2},
            download={"roots": [str(download_root)]},
        )
    )


@dataclass
class Service:
    url: str
    server: FusionServer
    download_root: Path


async def _serve(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    return runner, int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    root = tmp_path / "exports"
    root.mkdir()
    server = service_with_events(tmp_path / "data", root)
    runner, port = await _serve(server.build())
    try:
        yield Service(f"http://127.0.0.1:{port}", server, root)
    finally:
        await runner.cleanup()


class Relay:
    """A TCP relay to the server whose live connections the test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _create_case(url: str) -> Case:
    async with FusionClient(FusionClientConfig(api_url=url, api_key=ROBOT_KEY)) as client:
        return await FusionCaseAPIClient(client).create({"name": "watched", "acs": ["robots"]})


async def _update(client: FusionClient, case_guid: UUID, number: int) -> None:
    await FusionCaseAPIClient(client).update(case_guid, {"description": f"step {number}"})


async def test_dropped_event_stream_resumes_without_losing_events(service: Service) -> None:
    case = await _create_case(service.url)
    port = int(service.url.rsplit(":", 1)[1])
    relay = Relay(port)
    relayed_url = await relay.start()
    received: list[Event[Case]] = []
    subscribed = asyncio.Event()
    first_batch = asyncio.Event()
    done = asyncio.Event()

    async def watch() -> None:
        config = FusionClientConfig(api_url=relayed_url, api_key=ROBOT_KEY)
        async with FusionClient(config) as client:
            events = FusionEventAPIClient(client, initial_delay=0.05, max_delay=0.2)
            async for event in events.subscribe(case.guid):
                if event.category == "subscribers":
                    subscribed.set()
                if event.category != "update_case":
                    continue
                received.append(event)
                if len(received) == 3:
                    first_batch.set()
                if len(received) == 10:
                    done.set()
                    return

    watcher = asyncio.create_task(watch())
    direct = FusionClientConfig(api_url=service.url, api_key=ROBOT_KEY)
    try:
        async with FusionClient(direct) as client:
            # The server greets each new subscriber with a "subscribers" event.
            await asyncio.wait_for(subscribed.wait(), 10)
            for number in range(1, 4):
                await _update(client, case.guid, number)
            await asyncio.wait_for(first_batch.wait(), 10)
            relay.cut()  # the stream dies; these events happen while nobody listens
            for number in range(4, 11):
                await _update(client, case.guid, number)
            await asyncio.wait_for(done.wait(), 15)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await relay.stop()
    assert [event.case.description for event in received] == [f"step {n}" for n in range(1, 11)]
    assert all(event.case.guid == case.guid for event in received)
    assert all(event.source == "e2e" for event in received)
    assert relay.connections >= 2


async def test_event_stream_refusals(service: Service) -> None:
    case = await _create_case(service.url)
    async with FusionClient(FusionClientConfig(api_url=service.url)) as anonymous:
        with pytest.raises(FusionAPIError) as caught:
            async for _ in FusionEventAPIClient(anonymous).subscribe(case.guid):
                pass
        assert caught.value.status == 401
    config = FusionClientConfig(api_url=service.url, api_key=ROBOT_KEY)
    async with FusionClient(config) as client:
        with pytest.raises(FusionAPIError) as caught:
            async for _ in FusionEventAPIClient(client).subscribe(
                UUID("6f1b8a52-1f3b-4a6e-9a51-0d6f0a3c7e11")
            ):
                pass
        assert caught.value.status == 404


def _write_export(root: Path, size: int) -> tuple[Path, str]:
    path = root / "evidence.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _download_api(service: Service) -> FusionDownloadAPI:
    api = service.server.download_api
    assert api is not None, "the download section is configured"
    return api


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_multi_megabyte_download_verified_by_hash(service: Service, tmp_path: Path) -> None:
    source, digest = await asyncio.to_thread(_write_export, service.download_root, 12 * 2**20)
    key = await _download_api(service).prepare(source, "../../evidence 2026.bin")
    target_dir = tmp_path / "downloads"
    target_dir.mkdir()
    progress: list[tuple[int, int | None]] = []
    async with FusionClient(FusionClientConfig(api_url=service.url)) as client:
        downloads = FusionDownloadAPIClient(client)
        path = await downloads.download(
            key, target_dir, progress=lambda done, total: progress.append((done, total))
        )
        assert path.parent == target_dir
        assert await asyncio.to_thread(_sha256, path) == digest
        assert progress[-1][0] == 12 * 2**20
        # One use only.
        with pytest.raises(FusionAPIError) as caught:
            await downloads.download(key, tmp_path / "again.bin")
        assert caught.value.status == 404


async def test_cli_download_and_events(
    service: Service, tmp_path: Path, run_main: MainRunner
) -> None:
    async def _run_cli(*args: str, home: Path) -> tuple[int, str, str]:
        result = await run_main.in_thread(main, *args, env={"XDG_CONFIG_HOME": str(home)})
        return result.code, result.stdout, result.stderr

    source, digest = await asyncio.to_thread(_write_export, service.download_root, 3 * 2**20)
    key = await _download_api(service).prepare(source, "report.bin")
    output = tmp_path / "out.bin"
    code, out, err = await _run_cli(
        "--url", service.url, "download", f"{key.guid}/{key.token}", "-o", str(output),
        home=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert await asyncio.to_thread(_sha256, output) == digest
    # stderr is not a terminal: no progress bar (tests/client/test_cli_screen.py has one).
    assert err == ""
    assert out == f"{output}\n"
    code, _, err = await _run_cli(
        "--url", service.url, "download", f"{key.guid}/{key.token}", home=tmp_path
    )
    assert code == 1
    assert err.strip().startswith("fusion-client: error: server answered 404")

    case = await _create_case(service.url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fusion.client", "--url", service.url, "--api-key", ROBOT_KEY,
        "--json", "events", str(case.guid),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[Any] = []
    try:
        async with asyncio.timeout(20):
            first = msgspec.json.decode(await process.stdout.readline())
            assert first["category"] == "subscribers"
            async with FusionClient(
                FusionClientConfig(api_url=service.url, api_key=ROBOT_KEY)
            ) as client:
                await _update(client, case.guid, 1)
            while not lines:
                line = msgspec.json.decode(await process.stdout.readline())
                if line["category"] == "update_case":
                    lines.append(line)
    finally:
        process.send_signal(signal.SIGINT)
        _, err_bytes = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 130
    assert "Traceback" not in err_bytes.decode()
    assert lines[0]["case"]["description"] == "step 1"


async def test_tls_ca_and_fingerprint_against_the_real_server(
    tmp_path: Path, tls_files: TLSFiles
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.cert_file, tls_files.key_file)
    runner, port = await _serve(FusionServer(server_config(tmp_path / "data")).build(), context)
    url = f"https://127.0.0.1:{port}"
    try:
        for setting in (TLSConfig(ca_file=str(tls_files.ca_file)), tls_files.fingerprint):
            config = FusionClientConfig(api_url=url, ssl=setting)
            async with FusionClient(config) as client:
                assert (await FusionInfoAPIClient(client).info()).api == "fusion-test"
        for bad in (True, hashlib.sha256(b"other").hexdigest()):
            async with FusionClient(FusionClientConfig(api_url=url, ssl=bad)) as client:
                with pytest.raises(FusionConnectionError):
                    await FusionInfoAPIClient(client).info()
    finally:
        await runner.cleanup()
