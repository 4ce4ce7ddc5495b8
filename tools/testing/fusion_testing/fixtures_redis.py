"""Pytest fixtures for a real redis-server (loaded by the root conftest).

- ``redis_server``: one server for the whole session;
- ``redis_url``: that server's URL, flushed before the test;
- ``private_redis_server``: a server of the test's own, to kill and restart;
- ``store_url``: parametrized ``memory`` / ``redis``, to run a test on both stores.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fusion_testing.redis import RedisServer
from fusion_testing.services import require_binary

__all__ = ["private_redis_server", "redis_server", "redis_url", "store_url"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the session (skips or fails when not installed)."""
    server = RedisServer(require_binary("redis-server", "redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared redis-server, emptied (FLUSHALL) for this test."""
    if not redis_server.running:
        # A test may have stopped the shared server by mistake: bring it back.
        redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def private_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may kill and start again."""
    server = RedisServer(require_binary("redis-server", "redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_url(request: pytest.FixtureRequest) -> str:
    """``memory://``, then the URL of a flushed redis-server: one run per store.

    The Redis run carries the ``redis`` mark (``-m "not redis"`` skips it).
    """
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url
