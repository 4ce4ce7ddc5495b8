"""Contract of the shared store, run on ``memory://`` and on a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

import pytest
from fusion_testing.clock import WAIT, StoreClock, eventually
from fusion_testing.redis import RedisServer
from fusion_testing.services import free_port
from fusion_testing.tcp_proxy import TcpProxy

from fusion.helper.store import (
    GetBatcher,
    SharedStore,
    StoreMessage,
    StoreUnavailableError,
    create_store,
)


# -- keys -------------------------------------------------------------------
async def test_get_set_delete(store: SharedStore) -> None:
    assert await store.get("k") is None
    assert await store.set("k", b"v1") is True
    assert await store.get("k") == b"v1"
    assert await store.set("k", b"v2") is True
    assert await store.get("k") == b"v2"
    assert await store.ttl("k") is None
    assert await store.delete("k", "absent") == 1
    assert await store.get("k") is None
    assert await store.delete("k") == 0


async def test_binary_values_round_trip(store: SharedStore) -> None:
    value = bytes(range(256)) * 4
    await store.set("bin", value)
    assert await store.get("bin") == value


async def _absent(store: SharedStore, key: str) -> bool:
    return await store.get(key) is None


async def test_ttl_and_expiry(store: SharedStore, store_clock: StoreClock) -> None:
    await store.set("short", b"x", ttl=1)
    left = await store.ttl("short")
    assert left is not None
    assert 0 < left <= 1
    assert await store.get("short") == b"x"
    await store_clock.advance(1, lambda: _absent(store, "short"), "the key expired")
    assert await store.ttl("short") is None
    assert await store.pop("short") is None


async def test_expire(store: SharedStore, store_clock: StoreClock) -> None:
    assert await store.expire("absent", 10) is False
    await store.set("k", b"x")
    assert await store.expire("k", 1) is True
    left = await store.ttl("k")
    assert left is not None
    assert 0 < left <= 1
    assert await store.get("k") == b"x"
    await store_clock.advance(1, lambda: _absent(store, "k"), "the key expired")


async def test_only_if_absent(store: SharedStore, store_clock: StoreClock) -> None:
    assert await store.set("once", b"first", only_if_absent=True) is True
    assert await store.set("once", b"second", only_if_absent=True) is False
    assert await store.get("once") == b"first"
    await store.set("gone", b"x", ttl=0.5)
    await store_clock.advance(0.5, lambda: _absent(store, "gone"), "the key expired")
    assert await store.set("gone", b"again", ttl=5, only_if_absent=True) is True
    assert await store.get("gone") == b"again"


async def test_only_if_absent_single_winner(store: SharedStore) -> None:
    results = await asyncio.gather(
        *(store.set("race", str(i).encode(), only_if_absent=True) for i in range(50))
    )
    assert results.count(True) == 1
    winner = results.index(True)
    assert await store.get("race") == str(winner).encode()


async def test_pop_single_winner_under_concurrency(store: SharedStore) -> None:
    await store.set("token", b"secret", ttl=10)
    results = await asyncio.gather(*(store.pop("token") for _ in range(50)))
    assert [r for r in results if r is not None] == [b"secret"]
    assert await store.get("token") is None


@pytest.mark.redis
async def test_pop_single_winner_across_store_objects(redis_url: str) -> None:
    # Two store objects behave like two replicas sharing the backend (Redis
    # only: each memory:// store is a world of its own, by design).
    first, second = create_store(redis_url), create_store(redis_url)
    try:
        for round_ in range(20):
            key = f"token-{round_}"
            await first.set(key, b"value", ttl=10)
            results = await asyncio.gather(
                *(first.pop(key) for _ in range(5)), *(second.pop(key) for _ in range(5))
            )
            assert sum(r is not None for r in results) == 1
    finally:
        await first.close()
        await second.close()


async def test_incr_fixed_window(store: SharedStore, store_clock: StoreClock) -> None:
    # Long enough on Redis for the steps before the window ends, on any load.
    window = 3.0
    assert await store.incr("failures", ttl=window) == 1
    first_ttl = await store.ttl("failures")
    assert first_ttl is not None
    assert 0 < first_ttl <= window

    async def window_running() -> bool:
        left = await store.ttl("failures")
        assert left is not None, "the window ended early"
        return left < first_ttl

    await store_clock.advance(0.1, window_running, "the window ran")
    assert await store.incr("failures", ttl=window) == 2
    # The window is fixed: later increments do not push the expiry back.
    later_ttl = await store.ttl("failures")
    assert later_ttl is not None
    assert later_ttl < first_ttl
    assert await store.get("failures") == b"2"
    await store_clock.advance(window, lambda: _absent(store, "failures"), "the window ended")
    assert await store.incr("failures", ttl=window) == 1


async def test_incr_gives_a_persistent_key_a_window(store: SharedStore) -> None:
    await store.set("counter", b"41")
    assert await store.incr("counter", ttl=10) == 42
    left = await store.ttl("counter")
    assert left is not None
    assert 9 < left <= 10


async def test_incr_on_non_integer_is_a_value_error(store: SharedStore) -> None:
    await store.set("text", b"abc")
    with pytest.raises(ValueError, match="integer"):
        await store.incr("text", ttl=10)


async def test_incr_concurrent(store: SharedStore) -> None:
    results = await asyncio.gather(*(store.incr("n", ttl=10) for _ in range(100)))
    assert sorted(results) == list(range(1, 101))


async def test_incr_by_an_amount_and_give_back(store: SharedStore) -> None:
    assert await store.incr("n", ttl=10, amount=3) == 3
    assert await store.incr("n", ttl=10, amount=-1) == 2
    # Giving back never creates a counter (nor a negative one).
    assert await store.incr("absent", ttl=10, amount=-1) == 0
    assert await store.get("absent") is None
    assert await store.incr("absent", ttl=10) == 1


# -- bounded sets -------------------------------------------------------------
async def test_bounded_set_cap(store: SharedStore) -> None:
    for index in range(3):
        assert await store.bounded_add("pending", f"m{index}", ttl=10, cap=3) is True
    assert await store.bounded_add("pending", "m3", ttl=10, cap=3) is False
    assert await store.bounded_count("pending") == 3
    # Re-adding a present member refreshes it, even at the cap.
    assert await store.bounded_add("pending", "m0", ttl=10, cap=3) is True
    assert await store.bounded_count("pending") == 3
    assert await store.bounded_remove("pending", "m1") is True
    assert await store.bounded_remove("pending", "m1") is False
    assert await store.bounded_add("pending", "m3", ttl=10, cap=3) is True
    assert await store.bounded_count("pending") == 3
    assert await store.bounded_count("absent") == 0
    assert await store.bounded_remove("absent", "m") is False


async def test_bounded_set_expiry_frees_room(store: SharedStore, store_clock: StoreClock) -> None:
    assert await store.bounded_add("keys", "old", ttl=1, cap=2) is True
    assert await store.bounded_add("keys", "new", ttl=100, cap=2) is True
    assert await store.bounded_add("keys", "third", ttl=100, cap=2) is False

    async def one_left() -> bool:
        return await store.bounded_count("keys") == 1

    await store_clock.advance(1, one_left, "the old member expired")
    assert await store.bounded_add("keys", "third", ttl=100, cap=2) is True
    assert await store.bounded_remove("keys", "old") is False


async def test_bounded_set_whole_set_expires(store: SharedStore, store_clock: StoreClock) -> None:
    await store.bounded_add("brief", "a", ttl=1, cap=5)
    left = await store.ttl("brief")
    assert left is not None
    assert 0 < left <= 1
    assert await store.bounded_count("brief") == 1

    async def empty() -> bool:
        # Redis drops the key itself a moment after its last member's deadline.
        return await store.bounded_count("brief") == 0 and await store.ttl("brief") is None

    await store_clock.advance(1, empty, "the set expired")
    assert await store.ttl("brief") is None


async def test_bounded_add_concurrent_respects_cap(store: SharedStore) -> None:
    results = await asyncio.gather(
        *(store.bounded_add("capped", f"m{i}", ttl=10, cap=7) for i in range(40))
    )
    assert results.count(True) == 7
    assert await store.bounded_count("capped") == 7


# -- pub/sub and history --------------------------------------------------------
async def _next(iterator: AsyncIterator[tuple[str, StoreMessage]]) -> tuple[str, StoreMessage]:
    return await asyncio.wait_for(anext(iterator), WAIT)


async def test_publish_subscribe(store: SharedStore) -> None:
    async with store.subscribe("a", "b") as messages:
        assert await store.publish("a", b"one") is None
        message_id = await store.publish("b", b"two", history=10)
        await store.publish("c", b"not subscribed")
        assert await _next(messages) == ("a", StoreMessage(None, b"one"))
        assert await _next(messages) == ("b", StoreMessage(message_id, b"two"))
        assert message_id is not None
        await store.publish("a", b"three")
        assert await _next(messages) == ("a", StoreMessage(None, b"three"))


async def test_publish_binary_payload_with_spaces(store: SharedStore) -> None:
    payload = b" leading space \x00\n and binary \xff"
    async with store.subscribe("bin") as messages:
        message_id = await store.publish("bin", payload, history=5)
        await store.publish("bin", payload)
        assert await _next(messages) == ("bin", StoreMessage(message_id, payload))
        assert await _next(messages) == ("bin", StoreMessage(None, payload))


async def test_history_ids_increase_and_after_id(store: SharedStore) -> None:
    ids = [await store.publish("h", f"m{i}".encode(), history=5) for i in range(8)]
    assert all(isinstance(i, str) for i in ids)
    assert len(set(ids)) == 8
    kept = await store.history("h")
    # Bounded: only the last five are kept, oldest first.
    assert [m.data for m in kept] == [f"m{i}".encode() for i in range(3, 8)]
    assert [m.id for m in kept] == ids[3:]
    after = await store.history("h", ids[5])
    assert [m.data for m in after] == [b"m6", b"m7"]
    assert await store.history("h", ids[7]) == []
    # An id older than the kept window gives everything kept.
    assert len(await store.history("h", ids[0])) == 5
    assert await store.history("nothing") == []


async def test_history_rejects_nothing_on_malformed_id(store: SharedStore) -> None:
    await store.publish("h", b"x", history=3)
    # A client's bad Last-Event-ID must not break the stream: all is replayed.
    for bad in ("garbage", "", "-", "1-2-3", "99999999999999999999999-1"):
        assert [m.data for m in await store.history("h", bad)] == [b"x"], bad


async def test_history_expires(store: SharedStore, store_clock: StoreClock) -> None:
    await store.publish("h", b"x", history=3, history_ttl=1)
    assert len(await store.history("h")) == 1

    async def forgotten() -> bool:
        return await store.history("h") == []

    await store_clock.advance(1, forgotten, "the history expired")
    # A new publish after expiry still gets a larger id.
    await store.publish("h", b"y", history=3, history_ttl=10)
    assert [m.data for m in await store.history("h")] == [b"y"]


async def test_delivery_order_matches_id_order(store: SharedStore) -> None:
    async with store.subscribe("order") as messages:
        ids = await asyncio.gather(
            *(store.publish("order", str(i).encode(), history=100) for i in range(30))
        )
        received = [await _next(messages) for _ in range(30)]
    received_ids = [message.id for _, message in received]
    assert sorted(received_ids, key=lambda i: tuple(map(int, (i or "").split("-")))) == [
        message.id for _, message in received
    ]
    assert set(received_ids) == set(ids)


async def test_subscription_add_remove_channels(store: SharedStore) -> None:
    async with store.subscribe() as messages:
        await messages.add("x")  # type: ignore[attr-defined]
        await store.publish("x", b"1")
        assert await _next(messages) == ("x", StoreMessage(None, b"1"))
        await messages.add("y")  # type: ignore[attr-defined]
        await messages.remove("x")  # type: ignore[attr-defined]
        await store.publish("x", b"2")
        await store.publish("y", b"3")
        assert await _next(messages) == ("y", StoreMessage(None, b"3"))


async def test_unsubscribed_after_exit(store: SharedStore) -> None:
    async with store.subscribe("gone") as messages:
        pass
    await store.publish("gone", b"lost")
    with pytest.raises((StopAsyncIteration, StoreUnavailableError)):
        await asyncio.wait_for(anext(messages), 1)


# -- locks ---------------------------------------------------------------------
async def test_lock_exclusion(store: SharedStore) -> None:
    inside = 0
    overlap = False

    async def critical() -> None:
        nonlocal inside, overlap
        async with store.lock("job", timeout=5, blocking_timeout=5):
            inside += 1
            overlap = overlap or inside > 1
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(critical() for _ in range(5)))
    assert not overlap


async def test_lock_blocking_timeout(store: SharedStore) -> None:
    async with store.lock("busy", timeout=5):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with store.lock("busy", timeout=5, blocking_timeout=0.2):
                pytest.fail("acquired a held lock")
        # It waited (the upper bound is the loop's business, not this test's).
        assert time.monotonic() - started >= 0.2
        with pytest.raises(TimeoutError):
            async with store.lock("busy", blocking_timeout=0):
                pytest.fail("acquired a held lock")
    async with store.lock("busy", blocking_timeout=0.5):
        pass


async def test_lock_expires_after_timeout(store: SharedStore) -> None:
    # The first holder overruns: another caller gets the lock after ``timeout``.
    async with (
        store.lock("stale", timeout=0.2),
        store.lock("stale", timeout=5, blocking_timeout=30),
    ):
        pass


async def test_ping(store: SharedStore) -> None:
    await store.ping()


# -- Redis specifics -------------------------------------------------------------
async def test_create_store_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unsupported shared store"):
        create_store("mongodb://localhost")


@pytest.mark.redis
async def test_redis_prefix_namespaces_keys(redis_url: str, redis_server: RedisServer) -> None:
    first = create_store(redis_url + "?prefix=one:")
    second = create_store(redis_url)
    try:
        await first.set("k", b"1")
        await second.set("k", b"2")
        assert await first.get("k") == b"1"
        assert await second.get("k") == b"2"
        assert redis_server.command("GET", "one:k") == b"1"
        assert redis_server.command("GET", "fusion:k") == b"2"
    finally:
        await first.close()
        await second.close()


@pytest.mark.redis
async def test_redis_killed_then_restarted(private_redis_server: RedisServer) -> None:
    store = create_store(private_redis_server.url)
    try:
        await store.set("k", b"v")
        private_redis_server.kill()
        for call in (store.get("k"), store.set("k", b"w"), store.incr("c", ttl=5), store.ping()):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="redis"):
                await call
            assert time.monotonic() - started < 2
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            async with store.lock("l", blocking_timeout=1):
                pass
        assert time.monotonic() - started < 2
        private_redis_server.start()
        # Same store object, no restart of anything: it works again.
        await store.ping()
        assert await store.get("k") is None  # no persistence
        assert await store.set("k", b"back") is True
        assert await store.get("k") == b"back"
        assert await store.publish("c", b"x", history=2) is not None
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_subscription_ends_when_server_dies(
    private_redis_server: RedisServer,
) -> None:
    store = create_store(private_redis_server.url)
    try:
        async with store.subscribe("c") as messages:
            await store.publish("c", b"1")
            assert (await _next(messages))[1].data == b"1"
            private_redis_server.kill()
            with pytest.raises((StoreUnavailableError, StopAsyncIteration)):
                await asyncio.wait_for(anext(messages), 3)
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_unreachable_fails_fast() -> None:
    from fusion_testing.services import free_port

    store = create_store(f"redis://127.0.0.1:{free_port()}/0")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1"):
            await store.get("k")
        assert time.monotonic() - started < 2
    finally:
        await store.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://host:notaport/0", "Port"),
        ("redis://127.0.0.1:6379/abc", "database 'abc'"),
        ("redis://127.0.0.1:6379/0?socket_timeout=x", "socket_timeout"),
    ],
)
def test_redis_bad_url_is_a_clear_error(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"invalid Redis URL.*{reason}"):
        create_store(url)


@pytest.mark.redis
async def test_redis_password_never_in_errors() -> None:
    from fusion_testing.services import free_port

    store = create_store(f"redis://user:s3cr3t@127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            await store.get("k")
        assert "s3cr3t" not in str(caught.value)
        assert "user:***@" in str(caught.value)
    finally:
        await store.close()


# -- Redis: a reply lost after the command ran ------------------------------------
# A TcpProxy between the store and the real redis-server forwards a command,
# lets it run, then drops its reply with the connection: what redis-py's
# retry on a broken connection sees.
@pytest.fixture
async def lossy_store(redis_url: str, redis_server: RedisServer) -> AsyncIterator[LossyStore]:
    async with TcpProxy(redis_server.port) as proxy:
        store = create_store(f"redis://127.0.0.1:{proxy.port}/0")
        try:
            yield LossyStore(store, proxy)
        finally:
            await store.close()


class LossyStore(NamedTuple):
    store: SharedStore
    proxy: TcpProxy


@pytest.mark.redis
async def test_redis_lock_taken_when_the_reply_of_its_acquire_is_lost(
    lossy_store: LossyStore, redis_server: RedisServer
) -> None:
    store, proxy = lossy_store
    proxy.drop_reply_to(b"lock:job")
    # The first try took the lock; the retry must see that it is ours.
    async with store.lock("job", timeout=30, blocking_timeout=1):
        assert proxy.dropped == 1
        assert redis_server.command("EXISTS", "fusion:lock:job") == b":1"
    # Released, not left standing until its 30 s lease ends.
    assert redis_server.command("EXISTS", "fusion:lock:job") == b":0"
    async with store.lock("job", blocking_timeout=0):
        pass


@pytest.mark.redis
async def test_redis_lock_released_only_by_its_holder(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = create_store(redis_url)
    try:
        async with store.lock("lease", timeout=0.1):
            await eventually(
                lambda: redis_server.command("EXISTS", "fusion:lock:lease") == b":0",
                "Redis expired the lease",
            )
            # The lease ran out and another holder took the lock...
            redis_server.command("SET", "fusion:lock:lease", "someone-else")
        # ...whose lock the first one's release left alone.
        assert redis_server.command("GET", "fusion:lock:lease") == b"someone-else"
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_incr_not_counted_twice_when_its_reply_is_lost(
    lossy_store: LossyStore, redis_server: RedisServer
) -> None:
    store, proxy = lossy_store
    proxy.drop_reply_to(b"fusion:failures")
    with pytest.raises(StoreUnavailableError):
        await store.incr("failures", ttl=60)
    assert proxy.dropped == 1
    assert redis_server.command("GET", "fusion:failures") == b"1"
    assert await store.incr("failures", ttl=60) == 2


@pytest.mark.redis
async def test_redis_pop_fails_rather_than_answer_none_when_its_reply_is_lost(
    lossy_store: LossyStore,
) -> None:
    store, proxy = lossy_store
    await store.set("one-time", b"secret", ttl=60)
    proxy.drop_reply_to(b"fusion:one-time")
    # A retry would find the key gone and answer "unknown key".
    with pytest.raises(StoreUnavailableError):
        await store.pop("one-time")
    assert proxy.dropped == 1


@pytest.mark.redis
async def test_redis_set_if_absent_fails_rather_than_answer_taken_when_its_reply_is_lost(
    lossy_store: LossyStore,
) -> None:
    store, proxy = lossy_store
    proxy.drop_reply_to(b"fusion:claim")
    with pytest.raises(StoreUnavailableError):
        await store.set("claim", b"mine", only_if_absent=True)
    assert proxy.dropped == 1
    assert await store.get("claim") == b"mine"


@pytest.mark.redis
@pytest.mark.parametrize("history", [0, 5])
async def test_redis_publish_not_sent_twice_when_its_reply_is_lost(
    lossy_store: LossyStore, redis_url: str, history: int
) -> None:
    store, proxy = lossy_store
    listener = create_store(redis_url)
    try:
        async with listener.subscribe("news") as messages:
            proxy.drop_reply_to(b"fusion:news")
            with pytest.raises(StoreUnavailableError):
                await store.publish("news", b"once", history=history)
            assert proxy.dropped == 1
            assert (await _next(messages))[1].data == b"once"
            # Sent after it on the same path: the next message heard, so no copy before it.
            await store.publish("news", b"marker")
            assert (await _next(messages))[1].data == b"marker"
        assert len(await listener.history("news")) == (1 if history else 0)
    finally:
        await listener.close()


# -- get_many and GetBatcher ------------------------------------------------------


async def test_get_many_in_order(store: SharedStore) -> None:
    await store.set("many:a", b"1")
    await store.set("many:c", b"3", ttl=60)
    assert await store.get_many(["many:a", "many:b", "many:c", "many:a"]) == [
        b"1",
        None,
        b"3",
        b"1",
    ]
    assert await store.get_many([]) == []


class CountingStore:
    """Counts the round trips a GetBatcher makes to a real store."""

    def __init__(self, store: SharedStore) -> None:
        self.store = store
        self.calls: list[int] = []

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        self.calls.append(len(keys))
        return await self.store.get_many(keys)


async def test_batcher_shares_one_round_trip_per_iteration(store: SharedStore) -> None:
    for index in range(0, 100, 2):
        await store.set(f"batch:{index}", str(index).encode())
    counting = CountingStore(store)
    batcher = GetBatcher(counting)  # type: ignore[arg-type]
    values = await asyncio.gather(*(batcher.get(f"batch:{index}") for index in range(100)))
    assert values == [str(i).encode() if i % 2 == 0 else None for i in range(100)]
    assert counting.calls == [100]
    # The next iteration's reads go in a new batch, and see the store as it is now.
    await store.set("batch:1", b"now")
    assert await batcher.get("batch:1") == b"now"
    assert counting.calls == [100, 1]


async def test_batcher_caps_a_batch(store: SharedStore) -> None:
    await store.set("cap:7", b"seven")
    counting = CountingStore(store)
    batcher = GetBatcher(counting, max_batch=16)  # type: ignore[arg-type]
    values = await asyncio.gather(*(batcher.get(f"cap:{index % 10}") for index in range(40)))
    assert values == [b"seven" if index % 10 == 7 else None for index in range(40)]
    assert counting.calls == [16, 16, 8]


async def test_batcher_gives_every_waiter_the_store_error() -> None:
    store = create_store(f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.5")
    try:
        batcher = GetBatcher(store)
        results = await asyncio.gather(
            *(batcher.get(f"down:{index}") for index in range(5)), return_exceptions=True
        )
    finally:
        await store.close()
    assert len(results) == 5
    assert all(isinstance(result, StoreUnavailableError) for result in results), results


async def test_cancelled_waiter_leaves_the_others_their_value(store: SharedStore) -> None:
    await store.set("cancel:a", b"a")
    batcher = GetBatcher(store)
    first = asyncio.ensure_future(batcher.get("cancel:a"))
    second = asyncio.ensure_future(batcher.get("cancel:a"))
    first.cancel()
    assert await second == b"a"
    with pytest.raises(asyncio.CancelledError):
        await first
