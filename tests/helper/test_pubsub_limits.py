"""FusionPubSub's bound on a subscriber's queued bytes, and closing with ``discard``,
on memory:// and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from fusion.helper.pubsub import FusionPubSub, Subscription


async def _wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(1000):  # 10 s at least
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


async def _drain(subscription: Subscription) -> list[bytes]:
    async with asyncio.timeout(10):
        return [message.data async for message in subscription]


async def test_a_subscriber_over_its_bytes_is_dropped_with_its_queue_freed(
    pubsub: FusionPubSub,
) -> None:
    async with (
        pubsub.subscribe("bytes", maxsize=1000, max_bytes=10_000) as slow,
        pubsub.subscribe("bytes", maxsize=1000) as unbounded,
    ):
        chunk = b"x" * 3_000
        for _ in range(5):
            await pubsub.publish("bytes", chunk)
        # The fifth message would take the slow one past 10,000 bytes: dropped, far
        # below its 1,000 messages, and what it held is let go at once.
        await _wait_for(lambda: slow.dropped)
        assert slow.ended
        assert slow.queued_bytes == 0
        assert await _drain(slow) == []
        assert pubsub.subscriber_count("bytes") == 1
        received = [(await anext(unbounded)).data for _ in range(5)]
        assert received == [chunk] * 5
        assert unbounded.queued_bytes == 0
        assert not unbounded.dropped


async def test_one_message_larger_than_the_bound_still_reaches_a_subscriber_that_keeps_up(
    pubsub: FusionPubSub,
) -> None:
    async with pubsub.subscribe("large", max_bytes=100) as subscription:
        await pubsub.publish("large", b"y" * 1_000)
        assert (await asyncio.wait_for(anext(subscription), 10)).data == b"y" * 1_000
        await pubsub.publish("large", b"z" * 1_000)
        assert (await asyncio.wait_for(anext(subscription), 10)).data == b"z" * 1_000
        assert not subscription.dropped


async def test_close_with_discard_forgets_what_is_queued(pubsub: FusionPubSub) -> None:
    kept = pubsub.subscribe("discard")
    forgotten = pubsub.subscribe("discard")
    await kept.start()
    await forgotten.start()
    for index in range(3):
        await pubsub.publish("discard", b"%d" % index)
    await _wait_for(lambda: kept.queued_bytes == 3 and forgotten.queued_bytes == 3)
    kept.close()
    forgotten.close(discard=True)
    assert forgotten.queued_bytes == 0
    assert await _drain(kept) == [b"0", b"1", b"2"]
    assert await _drain(forgotten) == []


async def test_max_bytes_must_be_positive(pubsub: FusionPubSub) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        pubsub.subscribe("x", max_bytes=0)
