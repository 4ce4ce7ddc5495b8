"""Process-wide pub/sub over the shared store.

Every local subscriber of every channel shares ONE upstream subscription of
the store per :class:`FusionPubSub` (for Redis: one pub/sub connection per
process, whatever the number of channels and subscribers). Messages are
fanned out in-process to bounded per-subscriber queues::

    pubsub = FusionPubSub(store)
    async with pubsub.subscribe("events:case:...") as subscription:
        async for message in subscription:
            ...  # message.id (history id or None), message.data (bytes)

A subscriber so slow that its queue would pass ``maxsize`` messages (or
``max_bytes`` bytes) is dropped: its queue is emptied at once, its iterator
ends and ``subscription.dropped`` is True, the others are not slowed down.
When the upstream connection is lost, :class:`FusionPubSub` reconnects with
backoff and resubscribes every channel in use; local subscribers keep
working, but what was published meanwhile is lost (best effort): each
subscription counts those gaps in ``subscription.lost`` and, when created with
``end_on_loss=True``, ends so its consumer can resync from the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Protocol, runtime_checkable

from fusion.helper.store import SharedStore, StoreMessage, StoreUnavailableError

__all__ = ["ChannelSubscription", "FusionPubSub", "Subscription"]

_LOGGER = logging.getLogger(__name__)


@runtime_checkable
class ChannelSubscription(Protocol):
    """What ``SharedStore.subscribe()`` yields for FusionPubSub: channels can change."""

    async def add(self, *channels: str) -> None: ...

    async def remove(self, *channels: str) -> None: ...

    def __aiter__(self) -> AsyncIterator[tuple[str, StoreMessage]]: ...


class Subscription:
    """One local subscriber of one channel: an async iterator of :class:`StoreMessage`.

    Use it as an async context manager (``async with pubsub.subscribe(...)``):
    entering subscribes upstream (raising :class:`StoreUnavailableError` when
    the store cannot be reached), leaving unsubscribes.
    """

    def __init__(
        self,
        pubsub: FusionPubSub,
        channel: str,
        *,
        maxsize: int,
        max_bytes: int | None = None,
        end_on_loss: bool,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        self.channel = channel
        self.end_on_loss = end_on_loss
        self.max_bytes = max_bytes
        self.dropped = False
        """True when this subscriber was dropped because its queue was full."""
        self.lost = 0
        """How many times the upstream connection was lost while subscribed."""
        self._pubsub = pubsub
        self._queue: asyncio.Queue[StoreMessage | None] = asyncio.Queue(maxsize)
        self._queued_bytes = 0
        self._started = False
        self._ready = asyncio.Event()
        self._ended = False

    @property
    def ended(self) -> bool:
        """True once closed, dropped, or ended by a loss (``end_on_loss``)."""
        return self._ended

    @property
    def queued_bytes(self) -> int:
        """Bytes of the messages waiting in this subscriber's queue."""
        return self._queued_bytes

    async def start(self) -> None:
        """Subscribe upstream; done by ``async with`` or the first iteration.

        Once it returns, every message published to the channel is delivered
        (unless the upstream connection is lost: see :attr:`lost`). Raises
        :class:`StoreUnavailableError` (and the subscription is ended) when the
        store cannot be reached.
        """
        if self._started:
            await self._ready.wait()
            return
        if self._ended:
            raise RuntimeError("subscription already closed")
        self._started = True
        try:
            await self._pubsub._attach(self)
        except BaseException:
            self._end()
            raise
        finally:
            self._ready.set()

    def close(self, *, discard: bool = False) -> None:
        """Stop receiving; the iterator ends after the messages already queued,
        or at once with ``discard`` (the queued messages are forgotten)."""
        if self._started:
            self._pubsub._detach(self)
        self._end(discard=discard)

    async def __aenter__(self) -> Subscription:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StoreMessage:
        if not self._started:
            await self.start()
        if self._queue.empty():
            if self._ended:
                raise StopAsyncIteration
            item = await self._queue.get()
        else:
            item = self._queue.get_nowait()
        if item is None:
            raise StopAsyncIteration
        self._queued_bytes -= len(item.data)
        return item

    # -- called by FusionPubSub ------------------------------------------------
    def _offer(self, message: StoreMessage) -> bool:
        size = len(message.data)
        if (
            self.max_bytes is not None
            and self._queued_bytes + size > self.max_bytes
            and not self._queue.empty()
        ):
            # One message is always let through, however large: a subscriber
            # that keeps up must be able to receive it.
            return False
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        self._queued_bytes += size
        return True

    def _end(self, *, discard: bool = False) -> None:
        if discard:
            # A dropped or revoked subscriber frees its memory now, not when
            # (if ever) its consumer gets round to reading.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queued_bytes = 0
        elif self._ended:
            return
        self._ended = True
        # Wakes a consumer blocked on an empty queue; a full queue has no such
        # consumer, and it sees ``_ended`` once it has drained the queue.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)


class FusionPubSub:
    """Shares one upstream store subscription between every local subscriber."""

    def __init__(
        self,
        store: SharedStore,
        *,
        connect_timeout: float = 3.0,
        reconnect_delay: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        self.store = store
        self.connect_timeout = connect_timeout
        self.reconnect_delay = reconnect_delay
        self._channels: dict[str, set[Subscription]] = {}
        # Channels the current upstream is subscribed to.
        self._synced: set[str] = set()
        self._upstream: ChannelSubscription | None = None
        self._connected = asyncio.Event()
        self._wanted = asyncio.Event()
        self._wake = asyncio.Event()
        self._attempt = asyncio.Event()
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.losses = 0
        """How many times the upstream connection was lost since creation."""

    # -- public API ---------------------------------------------------------------
    def subscribe(
        self,
        channel: str,
        *,
        maxsize: int = 1000,
        max_bytes: int | None = None,
        end_on_loss: bool = False,
    ) -> Subscription:
        """A subscription to ``channel`` (enter it, or iterate it, to start receiving).

        A subscriber whose queue would hold more than ``maxsize`` messages, or
        more than ``max_bytes`` bytes of them (None: no byte bound; a single
        message is always accepted), is dropped at once and its queue cleared.
        """
        return Subscription(
            self, channel, maxsize=maxsize, max_bytes=max_bytes, end_on_loss=end_on_loss
        )

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        history: int = 0,
        history_ttl: float | None = None,
    ) -> str | None:
        """Publish through the store (see :meth:`SharedStore.publish`); returns the history id."""
        return await self.store.publish(channel, data, history=history, history_ttl=history_ttl)

    async def history(self, channel: str, after_id: str | None = None) -> list[StoreMessage]:
        """Messages kept for ``channel`` after ``after_id`` (see :meth:`SharedStore.history`)."""
        return await self.store.history(channel, after_id)

    def _is_closed(self) -> bool:
        # A call, so that type checkers do not assume it unchanged across awaits.
        return self._closed

    @property
    def connected(self) -> bool:
        """True while the upstream subscription is up."""
        return self._connected.is_set()

    def subscriber_count(self, channel: str | None = None) -> int:
        """Local subscribers of ``channel``, or of every channel."""
        if channel is not None:
            return len(self._channels.get(channel, ()))
        return sum(len(subscribers) for subscribers in self._channels.values())

    async def close(self) -> None:
        """End every subscription and the upstream one (the store stays open)."""
        self._closed = True
        for subscribers in list(self._channels.values()):
            for subscription in list(subscribers):
                subscription._end()
        self._channels.clear()
        tasks = list(self._tasks)
        if self._reader is not None:
            tasks.append(self._reader)
            self._reader = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- local subscribers ------------------------------------------------------------
    async def _attach(self, subscription: Subscription) -> None:
        if self._closed:
            raise RuntimeError("FusionPubSub is closed")
        channel = subscription.channel
        self._channels.setdefault(channel, set()).add(subscription)
        if channel in self._synced:
            return
        try:
            await self._subscribe_upstream(channel)
        except BaseException:
            self._forget(subscription)
            raise

    async def _subscribe_upstream(self, channel: str) -> None:
        self._ensure_reader()
        async with self._lock:
            if channel in self._synced:
                return
            upstream = await self._wait_upstream()
            # On failure the reader sees the broken connection too, and reconnects.
            await upstream.add(channel)
            if self._upstream is upstream:
                self._synced.add(channel)

    async def _wait_upstream(self) -> ChannelSubscription:
        if self._upstream is None:
            # Cut the reader's backoff short and take the outcome of its next attempt.
            attempt = self._attempt
            self._wake.set()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await attempt.wait()
            except TimeoutError:
                pass
            if self._upstream is None:
                raise StoreUnavailableError(f"pub/sub of {self.store.url} is not connected")
        return self._upstream

    def _detach(self, subscription: Subscription) -> None:
        self._forget(subscription)
        channel = subscription.channel
        if channel not in self._channels and channel in self._synced and not self._closed:
            task = asyncio.get_running_loop().create_task(self._unsubscribe_upstream(channel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _forget(self, subscription: Subscription) -> None:
        subscribers = self._channels.get(subscription.channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._channels[subscription.channel]

    async def _unsubscribe_upstream(self, channel: str) -> None:
        async with self._lock:
            # A new subscriber may have come while this task waited.
            if channel in self._channels or channel not in self._synced:
                return
            # Forgotten first: whatever happens below, a later subscriber
            # subscribes the channel again.
            self._synced.discard(channel)
            upstream = self._upstream
            if upstream is None:
                return
            try:
                await upstream.remove(channel)
            except Exception as exc:
                # Nobody awaits this task: an error here would only be "Task
                # exception was never retrieved". A dead connection has no
                # subscription left to remove, and the reader reconnects.
                _LOGGER.debug("unsubscribing %r: %s", channel, exc)

    # -- the upstream subscription ------------------------------------------------------
    def _ensure_reader(self) -> None:
        self._wanted.set()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._run())

    def _attempted(self) -> None:
        attempt, self._attempt = self._attempt, asyncio.Event()
        attempt.set()

    async def _run(self) -> None:
        delay = self.reconnect_delay[0]
        while not self._is_closed():
            await self._wanted.wait()
            self._wake.clear()
            connected = False
            try:
                # Channels may come and go while connecting: _resync() settles the difference.
                wanted = list(self._channels)
                async with self.store.subscribe(*wanted) as upstream:
                    if not isinstance(upstream, ChannelSubscription):
                        raise TypeError(
                            f"{type(self.store).__name__}.subscribe() must yield add()/remove()"
                        )
                    self._synced = set(wanted)
                    self._upstream = upstream
                    self._connected.set()
                    connected = True
                    self._attempted()
                    delay = self.reconnect_delay[0]
                    await self._resync(upstream)
                    async for channel, message in upstream:
                        self._fanout(channel, message)
                    if not self._closed:
                        raise StoreUnavailableError("upstream subscription ended")
            except StoreUnavailableError as exc:
                if connected:
                    _LOGGER.warning("pub/sub connection lost, reconnecting: %s", exc)
                else:
                    _LOGGER.debug("pub/sub connection failed: %s", exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                _LOGGER.exception("pub/sub reader failed, reconnecting")
            finally:
                self._upstream = None
                self._connected.clear()
                self._synced = set()
                if connected and not self._is_closed():
                    self._lost()
                self._attempted()
            if self._is_closed():
                return
            try:
                async with asyncio.timeout(delay * (0.5 + random.random())):
                    await self._wake.wait()
            except TimeoutError:
                pass
            delay = min(delay * 2, self.reconnect_delay[1])

    async def _resync(self, upstream: ChannelSubscription) -> None:
        async with self._lock:
            missing = [channel for channel in self._channels if channel not in self._synced]
            unused = [channel for channel in self._synced if channel not in self._channels]
            if missing:
                await upstream.add(*missing)
                self._synced.update(missing)
            if unused:
                self._synced.difference_update(unused)
                await upstream.remove(*unused)

    def _fanout(self, channel: str, message: StoreMessage) -> None:
        subscribers = self._channels.get(channel)
        if not subscribers:
            return
        slow = [subscription for subscription in subscribers if not subscription._offer(message)]
        for subscription in slow:
            _LOGGER.warning("pub/sub subscriber of %r dropped: queue full", channel)
            subscription.dropped = True
            subscription.close(discard=True)

    def _lost(self) -> None:
        self.losses += 1
        for subscribers in list(self._channels.values()):
            for subscription in list(subscribers):
                subscription.lost += 1
                if subscription.end_on_loss:
                    subscription.close()
