"""FusionDownloadAPI over real loopback sockets, on memory:// and a real redis-server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import uuid4

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fusion_testing.clock import StoreClock

from fusion.concept import PendingDownloadKey
from fusion.helper.http_envelope import envelope_middleware
from fusion.helper.store import SharedStore, create_store
from fusion.server.appkeys import STORE
from fusion.server.download import (
    DOWNLOADS,
    DownloadRootError,
    FusionDownloadAPI,
    FusionDownloadConfig,
    TooManyPendingDownloadsError,
)
from fusion.server.download.api import _KEY_PREFIX, _PENDING_SET

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


def _app(store: SharedStore, config: FusionDownloadConfig) -> web.Application:
    app = web.Application(middlewares=[envelope_middleware()])
    app[STORE] = store
    FusionDownloadAPI(config).setup(app)
    return app


async def _client(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path, **options: object
) -> tuple[Client, FusionDownloadAPI]:
    config = FusionDownloadConfig(roots=[str(root)], **options)  # type: ignore[arg-type]
    client = await aiohttp_client(_app(store, config))
    return client, client.app[DOWNLOADS]


def _url(key: PendingDownloadKey) -> str:
    return f"/api/download/{key.guid}/{key.token}"


async def _expect_404(client: Client, url: str) -> None:
    async with client.get(url) as response:
        assert response.status == 404
        body = await response.json()
        assert body["status"] == 404
        assert body["message"]


async def test_download_streams_the_file_once(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path
) -> None:
    client, api = await _client(aiohttp_client, store, root, chunk_size=4096)
    payload = os.urandom(100_000)
    (root / "sample.bin").write_bytes(payload)
    key = await api.prepare(root / "sample.bin", "sample.bin")
    # >= 16 random bytes, URL-safe base64 without padding.
    assert len(key.token) >= 22
    assert set(key.token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    async with client.get(_url(key)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"] == 'attachment; filename="sample.bin"'
        # The size is known: a Content-Length (clients show a percentage), not chunks.
        assert response.headers["Content-Length"] == str(len(payload))
        assert "Transfer-Encoding" not in response.headers
        assert await response.read() == payload
    await _expect_404(client, _url(key))


async def test_concurrent_fetches_only_one_wins(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path
) -> None:
    client, api = await _client(aiohttp_client, store, root)
    (root / "f").write_bytes(b"x" * 1000)
    key = await api.prepare(root / "f", "f")

    async def fetch() -> int:
        async with client.get(_url(key)) as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(fetch() for _ in range(10)))
    assert sorted(statuses) == [200] + [404] * 9


async def test_keys_expire(
    aiohttp_client: ClientFactory, store: SharedStore, store_clock: StoreClock, root: Path
) -> None:
    client, api = await _client(aiohttp_client, store, root, ttl=1)
    (root / "f").write_bytes(b"data")
    key = await api.prepare(root / "f", "f")
    pending = _KEY_PREFIX + str(key.guid)
    assert await store.get(pending) is not None

    async def expired() -> bool:
        return await store.get(pending) is None

    await store_clock.advance(1, expired, "the pending download expired")
    await _expect_404(client, _url(key))


async def test_pending_keys_are_capped(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path
) -> None:
    client, api = await _client(aiohttp_client, store, root, max_pending=2)
    (root / "f").write_bytes(b"data")
    first = await api.prepare(root / "f", "f")
    await api.prepare(root / "f", "f")
    with pytest.raises(TooManyPendingDownloadsError):
        await api.prepare(root / "f", "f")
    # A fetched key frees its place at once.
    async with client.get(_url(first)) as response:
        assert response.status == 200
    await api.prepare(root / "f", "f")


async def test_expired_keys_free_the_cap(
    aiohttp_client: ClientFactory, store: SharedStore, store_clock: StoreClock, root: Path
) -> None:
    _, api = await _client(aiohttp_client, store, root, max_pending=1, ttl=1)
    (root / "f").write_bytes(b"data")
    await api.prepare(root / "f", "f")
    with pytest.raises(TooManyPendingDownloadsError):
        await api.prepare(root / "f", "f")

    async def room() -> bool:
        return await store.bounded_count(_PENDING_SET) == 0

    await store_clock.advance(1, room, "the pending download left the cap")
    await api.prepare(root / "f", "f")


async def test_only_files_under_the_roots(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path, tmp_path: Path
) -> None:
    _, api = await _client(aiohttp_client, store, root)
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    (root / "sub").mkdir()
    (root / "sub" / "ok").write_bytes(b"ok")
    (root / "escape").symlink_to(outside)
    (root / "sub" / "dirlink").symlink_to(tmp_path)
    refused = [
        outside,
        root / "escape",
        root / "sub" / "dirlink" / "secret",
        root / ".." / "secret",
        root / "missing",
        root / "sub",
        Path("/etc/passwd"),
    ]
    for path in refused:
        with pytest.raises(DownloadRootError):
            await api.prepare(path, "x")
    # ".." that stays inside the root is fine: the resolved path is what counts.
    await api.prepare(root / "sub" / ".." / "sub" / "ok", "ok")


async def test_file_swapped_for_a_symlink_after_prepare(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path, tmp_path: Path
) -> None:
    client, api = await _client(aiohttp_client, store, root)
    (tmp_path / "secret").write_bytes(b"secret")
    target = root / "report"
    target.write_bytes(b"report")
    key = await api.prepare(target, "report")
    # The key recorded the resolved path; swap that path for a link out of the root.
    target.unlink()
    target.symlink_to(tmp_path / "secret")
    await _expect_404(client, _url(key))


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ('quote"s.txt', 'attachment; filename="quote_s.txt"'),
        ("../../etc/passwd", 'attachment; filename="passwd"'),
        ("a\\b\\c.txt", 'attachment; filename="c.txt"'),
        ("line\r\nX-Evil: 1", 'attachment; filename="line__X-Evil_ 1"'),
        ("report\u202egnp.exe", 'attachment; filename="reportgnp.exe"'),
        ("CON", 'attachment; filename="_CON"'),
        ("", 'attachment; filename="download"'),
        (
            "résumé été.pdf",
            'attachment; filename="resume ete.pdf"; '
            "filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%A9t%C3%A9.pdf",
        ),
        ("日本.txt", "attachment; filename=\"download\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt"),
    ],
)
async def test_odd_filenames_get_a_safe_content_disposition(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path, filename: str, expected: str
) -> None:
    client, api = await _client(aiohttp_client, store, root)
    (root / "f").write_bytes(b"data")
    key = await api.prepare(root / "f", filename)
    async with client.get(_url(key)) as response:
        assert response.status == 200
        header = response.headers["Content-Disposition"]
        assert await response.read() == b"data"
    assert "\r" not in header
    assert "\n" not in header
    # The ASCII fallback may be any safe name; the exact value shows what a browser saves.
    if not expected.endswith("download\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt"):
        assert header == expected
    else:
        assert header.endswith("filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt")


async def test_bad_keys_are_404_never_500(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path
) -> None:
    client, api = await _client(aiohttp_client, store, root)
    (root / "f").write_bytes(b"data")
    key = await api.prepare(root / "f", "f")
    guid = str(key.guid)
    bad = [
        f"/api/download/{{{guid}}}/{key.token}",  # braces match no route
        f"/api/download/{guid}/short",
        f"/api/download/{guid}/{key.token}%00",
        f"/api/download/{guid}/{'x' * 5000}",
        f"/api/download/{guid}/{key.token[:-1]}{'A' if key.token[-1] != 'A' else 'B'}",
        f"/api/download/{uuid4()}/{key.token}",
        f"/api/download/{guid}/..%2F..%2Fetc%2Fpasswd",
    ]
    for url in bad:
        await _expect_404(client, url)
    # A GUID not in its canonical form is refused as on every route (400), key untouched.
    hexa = guid.replace("-", "")
    for spelling in (guid.upper(), hexa, f"urn:uuid:{guid}", "not-a-guid", f"{guid}0"):
        async with client.get(f"/api/download/{spelling}/{key.token}") as response:
            assert response.status == 400
            body = await response.json()
            assert body["status"] == 400
            assert body["message"].startswith("invalid GUID for guid")
    # None of the wrong tokens or spellings burnt the key for its holder.
    async with client.get(_url(key)) as response:
        assert response.status == 200
        assert await response.read() == b"data"


async def test_any_replica_serves_the_fetch(
    aiohttp_client: ClientFactory, redis_url: str, root: Path
) -> None:
    first_store, second_store = create_store(redis_url), create_store(redis_url)
    try:
        config = FusionDownloadConfig(roots=[str(root)])
        first = await aiohttp_client(_app(first_store, config))
        second = await aiohttp_client(_app(second_store, config))
        (root / "f").write_bytes(b"shared")
        key = await first.app[DOWNLOADS].prepare(root / "f", "f")
        async with second.get(_url(key)) as response:
            assert response.status == 200
            assert await response.read() == b"shared"
        await _expect_404(first, _url(key))
    finally:
        await first_store.close()
        await second_store.close()


async def test_store_outage_is_503(
    aiohttp_client: ClientFactory, root: Path, private_redis_server: object
) -> None:
    from fusion_testing.redis import RedisServer

    assert isinstance(private_redis_server, RedisServer)
    store = create_store(private_redis_server.url)
    try:
        client, api = await _client(aiohttp_client, store, root)
        (root / "f").write_bytes(b"data")
        key = await api.prepare(root / "f", "f")
        private_redis_server.stop()
        async with client.get(_url(key)) as response:
            assert response.status == 503
            assert (await response.json())["message"] == "shared store unavailable"
    finally:
        await store.close()


async def test_client_disconnect_mid_download_is_harmless(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path
) -> None:
    client, api = await _client(aiohttp_client, store, root, chunk_size=4096)
    (root / "big").write_bytes(os.urandom(4 * 1024 * 1024))
    key = await api.prepare(root / "big", "big")
    async with client.get(_url(key)) as response:
        assert response.status == 200
        assert len(await response.content.read(10)) == 10
        # Drop the connection with most of the file unsent.
        response.close()
    # The server keeps answering.
    await _expect_404(client, _url(key))


async def test_prepare_errors_are_envelope_answers(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path
) -> None:
    config = FusionDownloadConfig(roots=[str(root)], max_pending=1)
    app = _app(store, config)

    async def prepare(request: web.Request) -> web.Response:
        key = await request.app[DOWNLOADS].prepare(root / request.query["name"], "x")
        return web.json_response({"status": 200, "data": key.to_dict()})

    app.router.add_post("/prepare", prepare)
    client = await aiohttp_client(app)
    (root / "f").write_bytes(b"data")
    async with client.post("/prepare?name=../../etc/passwd") as response:
        assert response.status == 404
        body = await response.json()
        # The answer names no server path.
        assert body == {"status": 404, "message": "file not found"}
    async with client.post("/prepare?name=f") as response:
        assert response.status == 200
    async with client.post("/prepare?name=f") as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "60"
        assert "pending" in (await response.json())["message"]


async def test_head_does_not_use_up_the_key(
    aiohttp_client: ClientFactory, store: SharedStore, root: Path
) -> None:
    client, api = await _client(aiohttp_client, store, root)
    (root / "f").write_bytes(b"data")
    key = await api.prepare(root / "f", "f")
    async with client.head(_url(key)) as response:
        assert response.status == 405
    async with client.get(_url(key)) as response:
        assert response.status == 200
