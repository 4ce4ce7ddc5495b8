"""FusionPubSub: one upstream subscription per process, fanned out locally."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import pytest
from fusion_testing.redis import RedisServer

from fusion.helper.pubsub import FusionPubSub, Subscription
from fusion.helper.store import SharedStore, StoreMessage, StoreUnavailableError, create_store


async def _next(subscription: Subscription) -> StoreMessage:
    return await asyncio.wait_for(anext(subscription), 2)


async def _wait_for(condition: Callable[[], bool], within: float = 3) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_publish_reaches_every_local_subscriber(pubsub: FusionPubSub) -> None:
    async with (
        pubsub.subscribe("a") as first,
        pubsub.subscribe("a") as second,
        pubsub.subscribe("b") as other,
    ):
        assert pubsub.subscriber_count("a") == 2
        assert pubsub.subscriber_count() == 3
        message_id = await pubsub.publish("a", b"hello", history=10)
        await pubsub.publish("b", b"world")
        assert await _next(first) == StoreMessage(message_id, b"hello")
        assert await _next(second) == StoreMessage(message_id, b"hello")
        assert await _next(other) == StoreMessage(None, b"world")
        assert [m.data for m in await pubsub.history("a")] == [b"hello"]
        assert await pubsub.history("a", message_id) == []
    assert pubsub.subscriber_count() == 0


async def test_iterating_starts_the_subscription(pubsub: FusionPubSub) -> None:
    subscription = pubsub.subscribe("lazy")
    reader = asyncio.create_task(anext(subscription))
    await asyncio.sleep(0)
    assert pubsub.subscriber_count("lazy") == 1
    await subscription.start()  # waits for the subscription the reader started
    await pubsub.publish("lazy", b"x")
    assert (await asyncio.wait_for(reader, 2)).data == b"x"
    subscription.close()
    with pytest.raises(StopAsyncIteration):
        await _next(subscription)


async def test_resubscribe_right_after_unsubscribe(pubsub: FusionPubSub) -> None:
    for round_ in range(5):
        async with pubsub.subscribe("flap") as subscription:
            await pubsub.publish("flap", str(round_).encode())
            assert (await _next(subscription)).data == str(round_).encode()


async def test_many_subscribers_many_channels(pubsub: FusionPubSub) -> None:
    subscriptions = [pubsub.subscribe(f"c{i % 10}") for i in range(1000)]
    await asyncio.gather(*(s.start() for s in subscriptions))
    for channel in range(10):
        await pubsub.publish(f"c{channel}", f"m{channel}".encode())
    for index, subscription in enumerate(subscriptions):
        assert (await _next(subscription)).data == f"m{index % 10}".encode()
        subscription.close()
    await pubsub.close()
    assert pubsub.subscriber_count() == 0


async def test_slow_subscriber_dropped_fast_ones_complete(pubsub: FusionPubSub) -> None:
    received: list[list[bytes]] = [[], []]

    async def consume(subscription: Subscription, into: list[bytes]) -> None:
        async for message in subscription:
            into.append(message.data)
            if len(into) == 200:
                return

    async with (
        pubsub.subscribe("busy", maxsize=5) as slow,
        pubsub.subscribe("busy") as fast1,
        pubsub.subscribe("busy") as fast2,
    ):
        consumers = [
            asyncio.create_task(consume(fast1, received[0])),
            asyncio.create_task(consume(fast2, received[1])),
        ]
        for index in range(200):
            await pubsub.publish("busy", str(index).encode())
        await asyncio.wait_for(asyncio.gather(*consumers), 5)
        expected = [str(index).encode() for index in range(200)]
        assert received == [expected, expected]
        assert slow.dropped
        assert not fast1.dropped
        assert not fast2.dropped
        # What the slow one had queued is still delivered, then its iterator ends.
        leftovers = [message.data async for message in slow]
        assert leftovers == expected[: len(leftovers)]
        assert len(leftovers) <= 5
        assert pubsub.subscriber_count("busy") == 2


async def test_close_ends_every_subscription(store: SharedStore) -> None:
    hub = FusionPubSub(store)
    subscriptions = [hub.subscribe("x"), hub.subscribe("y")]
    for subscription in subscriptions:
        await subscription.start()
    readers = [asyncio.create_task(anext(s)) for s in subscriptions]
    await asyncio.sleep(0.01)
    await hub.close()
    for reader in readers:
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reader, 2)
    with pytest.raises(RuntimeError, match="closed"):
        await hub.subscribe("z").start()


async def test_maxsize_validated(pubsub: FusionPubSub) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        pubsub.subscribe("x", maxsize=0)


# -- Redis: one connection, and recovery ---------------------------------------------
@pytest.mark.redis
async def test_one_redis_connection_for_all_subscribers(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = create_store(redis_url)
    hub = FusionPubSub(store)
    try:
        subscriptions = [hub.subscribe("one") for _ in range(1000)]
        subscriptions += [hub.subscribe(f"other{i}") for i in range(20)]
        await asyncio.gather(*(s.start() for s in subscriptions))
        clients = redis_server.pubsub_clients()
        assert len(clients) == 1
        assert clients[0]["sub"] == "21"
        await hub.publish("one", b"fan-out")
        for subscription in subscriptions[:1000]:
            assert (await _next(subscription)).data == b"fan-out"
        # Leaving channels unsubscribes them upstream, on the same connection.
        for subscription in subscriptions[1000:]:
            subscription.close()
        await _wait_for(lambda: redis_server.pubsub_clients()[0]["sub"] == "1")
    finally:
        await hub.close()
        await store.close()
    await _wait_for(lambda: redis_server.pubsub_clients() == [])


@pytest.mark.redis
async def test_recovers_after_redis_restart(private_redis_server: RedisServer) -> None:
    store = create_store(private_redis_server.url)
    hub = FusionPubSub(store)
    try:
        keeper = hub.subscribe("case")
        ender = hub.subscribe("case", end_on_loss=True)
        await keeper.start()
        await ender.start()
        await hub.publish("case", b"before")
        assert (await _next(keeper)).data == b"before"
        assert (await _next(ender)).data == b"before"

        private_redis_server.kill()
        await _wait_for(lambda: keeper.lost == 1)
        assert hub.losses == 1
        # The resyncing kind ends so its consumer can replay the history.
        with pytest.raises(StopAsyncIteration):
            await _next(ender)
        assert ender.lost == 1
        assert not ender.dropped
        # New subscribers are refused quickly while Redis is away.
        started = time.monotonic()
        refused = hub.subscribe("case")
        with pytest.raises(StoreUnavailableError):
            await refused.start()
        assert time.monotonic() - started < 4
        assert refused.ended
        assert hub.subscriber_count("case") == 1

        private_redis_server.start()
        await _wait_for(lambda: hub.connected, within=5)
        # Nothing was restarted on our side: new publishes are delivered again.
        await hub.publish("case", b"after")
        assert (await _next(keeper)).data == b"after"
        assert keeper.lost == 1
        async with hub.subscribe("case") as late:
            await hub.publish("case", b"later")
            assert (await _next(late)).data == b"later"
        assert (await _next(keeper)).data == b"later"
        assert len(private_redis_server.pubsub_clients()) == 1
    finally:
        await hub.close()
        await store.close()


@pytest.mark.redis
async def test_channels_changed_during_outage_are_settled(
    private_redis_server: RedisServer,
) -> None:
    store = create_store(private_redis_server.url)
    hub = FusionPubSub(store, reconnect_delay=(0.05, 0.2))
    try:
        staying = hub.subscribe("staying")
        leaving = hub.subscribe("leaving")
        await staying.start()
        await leaving.start()
        private_redis_server.kill()
        await _wait_for(lambda: hub.losses == 1)
        leaving.close()
        private_redis_server.start()
        # Subscribers arriving while the reader reconnects all get subscribed.
        newcomers = [hub.subscribe(f"new{i}") for i in range(20)]
        await asyncio.gather(*(s.start() for s in newcomers))
        await _wait_for(lambda: hub.connected)
        for index, subscription in enumerate(newcomers):
            await hub.publish(f"new{index}", b"hi")
            assert (await _next(subscription)).data == b"hi"
        await hub.publish("staying", b"still")
        assert (await _next(staying)).data == b"still"
        # The upstream connection ends up with exactly the channels in use.
        await _wait_for(lambda: private_redis_server.pubsub_clients()[0]["sub"] == "21")
    finally:
        await hub.close()
        await store.close()


@pytest.mark.redis
@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_unsubscribe_while_redis_goes_away_is_harmless(
    private_redis_server: RedisServer, how: str
) -> None:
    """Leaving a channel just as Redis dies raises nowhere, and nothing sticks.

    The unsubscribe runs in a task of its own; when it raced the reader's
    discovery of the dead connection it failed with "'NoneType' object has
    no attribute 'writelines'", reported only as "Task exception was never
    retrieved". The yields between the death and the unsubscribe sweep the
    interleavings of the two.
    """
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    store = create_store(private_redis_server.url)
    hub = FusionPubSub(store, reconnect_delay=(0.01, 0.05))
    try:
        for yields in range(12):
            subscription = hub.subscribe("leaving")
            await subscription.start()
            getattr(private_redis_server, how)()
            for _ in range(yields):
                await asyncio.sleep(0)
            subscription.close()
            await asyncio.sleep(0.05)
            private_redis_server.start()
            await _wait_for(lambda: hub.connected)
            # The channel left during the outage can be subscribed again, and hears.
            async with hub.subscribe("leaving") as again:
                await hub.publish("leaving", b"back")
                assert (await _next(again)).data == b"back", yields
        # Unretrieved task exceptions are reported when the task is collected.
        gc.collect()
        await asyncio.sleep(0)
        assert unhandled == []
    finally:
        await hub.close()
        await store.close()
        loop.set_exception_handler(previous_handler)
