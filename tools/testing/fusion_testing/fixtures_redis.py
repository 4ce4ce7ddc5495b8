"""Pytest fixtures for a real redis-server (loaded by the root conftest).

- ``redis_server``: one server for the whole session;
- ``redis_url``: that server's URL, flushed before the test;
- ``private_redis_server``: a server of the test's own, to kill and restart;
- ``store_url``: parametrized ``memory`` / ``redis``, to run a test on both stores;
- ``store_clock``: the TTL time of ``store`` (a manual clock on ``memory://``,
  Redis's own on Redis), which tests advance instead of sleeping TTLs out;
- ``store``: a :class:`SharedStore` on ``store_url``, closed after the test;
- ``pubsub``: a :class:`FusionPubSub` on ``store``, closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from fusion.helper.pubsub import FusionPubSub
from fusion.helper.store import SharedStore
from fusion_testing.clock import ManualClock, StoreClock
from fusion_testing.redis import RedisServer
from fusion_testing.services import require_binary

__all__ = [
    "private_redis_server",
    "pubsub",
    "redis_server",
    "redis_url",
    "store",
    "store_clock",
    "store_url",
]


def _running_server() -> Iterator[RedisServer]:
    server = RedisServer(require_binary("redis-server", "redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the session (skips or fails when not installed)."""
    yield from _running_server()


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
    yield from _running_server()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_url(request: pytest.FixtureRequest) -> str:
    """``memory://``, then the URL of a flushed redis-server: one run per store.

    The Redis run carries the ``redis`` mark (``-m "not redis"`` skips it).
    """
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def store_clock(store_url: str) -> StoreClock:
    """The TTL time of ``store_url``'s stores: advance it instead of sleeping TTLs out."""
    return StoreClock(ManualClock() if store_url.startswith("memory://") else None)


@pytest.fixture
async def store(store_url: str, store_clock: StoreClock) -> AsyncIterator[SharedStore]:
    """The store of ``store_url`` (once per store) on ``store_clock``, closed after the test."""
    shared = store_clock.create_store(store_url)
    try:
        yield shared
    finally:
        await shared.close()


@pytest.fixture
async def pubsub(store: SharedStore) -> AsyncIterator[FusionPubSub]:
    """A :class:`FusionPubSub` on ``store``, closed after the test."""
    hub = FusionPubSub(store)
    try:
        yield hub
    finally:
        await hub.close()
