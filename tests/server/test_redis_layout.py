"""What a server leaves in Redis: every key under the store's one prefix, once."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    ServerFactory,
    call,
    login,
    server_config,
)

pytestmark = pytest.mark.redis


async def test_keys_carry_the_store_prefix_once(
    tmp_path: Path, redis_url: str, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    config = server_config(tmp_path, shared_store={"url": redis_url}, event={"source": "layout"})
    running = await fusion_server(config)
    alice = http_sessions(running.url)
    assert (await login(alice, "alice", "wrong"))[0] == 400
    assert (await login(alice, "alice"))[0] == 200
    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, body = await call(robot, "POST", "/api/case", json={"name": "layout"})
    assert status == 200, body
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        keys = sorted(key.decode() for key in await client.keys("*"))
    finally:
        await client.aclose()
    # A session, the failure counters of the throttle, the case's event history.
    assert any(key.startswith("fusion:session:") for key in keys), keys
    assert any(key.startswith("fusion:throttle:") for key in keys), keys
    assert any(key.startswith("fusion:history:events:case:") for key in keys), keys
    assert all(key.startswith("fusion:") for key in keys), keys
    assert not any(key.startswith("fusion:fusion:") for key in keys), keys
