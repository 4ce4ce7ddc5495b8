"""GET /api/health and GET /api/ready over real sockets: a real redis-server killed,
frozen and restarted, the storage closed or its directory gone, a real slapd stopped."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fusion_testing.fixtures_server import HTTPSessionFactory, ServerFactory, call, server_config
from fusion_testing.redis import RedisServer
from fusion_testing.slapd import SlapdServer

from fusion.server.app import FusionServer

ALL_OK = {"shared_store": "ok", "storage": "ok", "auth": "ok"}
# Generous: the suite runs on a loaded 2-core machine; each wait ends as soon
# as the condition holds.
DEADLINE = 30.0


async def _ready(session: aiohttp.ClientSession) -> tuple[int, Any]:
    return await call(session, "GET", "/api/ready")


async def _until_ready(session: aiohttp.ClientSession, want: int) -> Any:
    """The first /api/ready answer with status ``want`` (polled, within DEADLINE)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        status, body = await _ready(session)
        if status == want:
            return body
        assert loop.time() < deadline, (status, body)
        await asyncio.sleep(0.05)


def _assert_nothing_secret(body: Any, *secrets: str) -> None:
    """Only check names and states (and the status, count and message): no reason,
    no host, no path, no URL."""
    assert set(body) <= {"status", "data", "count", "message"}
    assert set(body["data"]) <= set(ALL_OK)
    assert set(body["data"].values()) <= {"ok", "down", "timeout"}
    text = repr(body)
    for secret in secrets:
        assert secret not in text


async def _server(
    fusion_server: ServerFactory, tmp_path: Path, store_url: str, **sections: Any
) -> tuple[FusionServer, str]:
    data_dir = tmp_path / "data"
    config = server_config(data_dir, shared_store={"url": store_url}, **sections)
    running = await fusion_server(config)
    assert running.server is not None
    return running.server, running.url


async def test_live_and_ready_without_credentials(
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
    store_url: str,
) -> None:
    _, url = await _server(fusion_server, tmp_path, store_url)
    anonymous = http_sessions(url)
    assert await call(anonymous, "GET", "/api/health") == (200, {"status": 200})
    status, body = await _ready(anonymous)
    assert (status, body) == (200, {"status": 200, "data": ALL_OK, "count": 3})
    # Other protected routes still want credentials.
    assert (await call(anonymous, "GET", "/api/cases"))[0] == 401


async def test_without_auth_backend_ready_checks_store_and_storage(
    fusion_server: ServerFactory, http_sessions: HTTPSessionFactory, tmp_path: Path
) -> None:
    _, url = await _server(fusion_server, tmp_path, "memory://", auth=None)
    status, body = await _ready(http_sessions(url))
    assert status == 200
    assert body["data"] == {"shared_store": "ok", "storage": "ok"}


async def test_health_null_serves_neither(
    fusion_server: ServerFactory, http_sessions: HTTPSessionFactory, tmp_path: Path
) -> None:
    _, url = await _server(fusion_server, tmp_path, "memory://", health=None)
    session = http_sessions(url)
    assert (await call(session, "GET", "/api/health"))[0] == 404
    assert (await call(session, "GET", "/api/ready"))[0] == 404


@pytest.mark.redis
async def test_ready_follows_a_killed_and_restarted_redis(
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
    private_redis_server: RedisServer,
) -> None:
    _, url = await _server(fusion_server, tmp_path, private_redis_server.url)
    session = http_sessions(url)
    assert await _ready(session) == (200, {"status": 200, "data": ALL_OK, "count": 3})

    private_redis_server.kill()
    status, body = await _ready(session)
    assert status == 503
    assert body["message"] == "not ready: shared_store"
    assert body["data"] == {**ALL_OK, "shared_store": "down"}
    _assert_nothing_secret(body, str(private_redis_server.port), str(tmp_path), "127.0.0.1")
    # Live all along: the process answers, a load balancer only stops sending.
    assert await call(session, "GET", "/api/health") == (200, {"status": 200})

    private_redis_server.start()
    assert (await _until_ready(session, 200))["data"] == ALL_OK


@pytest.mark.redis
async def test_a_frozen_redis_does_not_hang_the_probe(
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
    private_redis_server: RedisServer,
) -> None:
    """SIGSTOP: connections accepted, nothing answered. The check gives up after
    check_timeout (below redis-py's own socket timeout) instead of waiting."""
    _, url = await _server(
        fusion_server, tmp_path, private_redis_server.url, health={"check_timeout": 0.3}
    )
    session = http_sessions(url)
    assert (await _ready(session))[0] == 200
    info = private_redis_server.command("INFO", "server").decode()
    found = re.search(r"^process_id:(\d+)", info, re.MULTILINE)
    assert found is not None, info
    pid = int(found.group(1))
    os.kill(pid, signal.SIGSTOP)
    try:
        status, body = await _ready(session)
        assert status == 503
        assert body["data"] == {**ALL_OK, "shared_store": "timeout"}
        assert await call(session, "GET", "/api/health") == (200, {"status": 200})
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (await _until_ready(session, 200))["data"] == ALL_OK


async def test_storage_closed_then_reopened(
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
    store_url: str,
) -> None:
    server, url = await _server(fusion_server, tmp_path, store_url)
    assert server.storage is not None
    session = http_sessions(url)
    await server.storage.shutdown()
    status, body = await _ready(session)
    assert status == 503
    assert body["message"] == "not ready: storage"
    assert body["data"] == {**ALL_OK, "storage": "down"}
    _assert_nothing_secret(body, str(tmp_path), "sqlite")
    assert await call(session, "GET", "/api/health") == (200, {"status": 200})
    await server.storage.startup()
    assert await _ready(session) == (200, {"status": 200, "data": ALL_OK, "count": 3})


async def test_storage_directory_gone_is_not_ready(
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
    store_url: str,
) -> None:
    """The data directory removed under the running server (a volume lost): SQLite
    still writes to its open, now nameless, file; readiness says what it is."""
    _, url = await _server(fusion_server, tmp_path, store_url)
    session = http_sessions(url)
    assert (await _ready(session))[0] == 200
    shutil.rmtree(tmp_path / "data")
    status, body = await _ready(session)
    assert status == 503
    assert body["data"] == {**ALL_OK, "storage": "down"}
    _assert_nothing_secret(body, str(tmp_path))
    assert await call(session, "GET", "/api/health") == (200, {"status": 200})


@pytest.mark.ldap
async def test_ready_follows_the_directory(
    slapd_factory: Callable[..., SlapdServer],
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
) -> None:
    directory = slapd_factory()
    backend = {
        "type": "ldap",
        "url": directory.url,
        "bind_dn": directory.service_dn,
        "bind_password": directory.service_password,
        "user_base": directory.people_base,
        "connect_timeout": 1,
        "receive_timeout": 1,
    }
    _, url = await _server(fusion_server, tmp_path, "memory://", auth={"backend": backend})
    session = http_sessions(url)
    assert await _ready(session) == (200, {"status": 200, "data": ALL_OK, "count": 3})
    directory.stop()
    status, body = await _ready(session)
    assert status == 503
    assert body["message"] == "not ready: auth"
    assert body["data"] == {**ALL_OK, "auth": "down"}
    _assert_nothing_secret(body, directory.service_password, directory.url, str(tmp_path))
    directory.start()
    assert (await _until_ready(session, 200))["data"] == ALL_OK
