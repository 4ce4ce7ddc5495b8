"""The in-process shared store (``memory://``), for a single server process.

Everything lives in dicts of this process; nothing is awaited except locks
and subscriptions, so each operation is atomic with respect to the event
loop (no other coroutine runs in the middle of it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fusion.helper.store import SharedStore, StoreMessage, history_cut, message_id_key

__all__ = ["MemoryStore", "MemorySubscription"]

_LOGGER = logging.getLogger(__name__)

# Expired entries are dropped when read; a full sweep at most this often
# keeps keys that are never read again (abandoned sessions) from piling up.
_SWEEP_INTERVAL = 30.0


@dataclass(slots=True)
class _History:
    messages: deque[StoreMessage]
    deadline: float | None


@dataclass(slots=True)
class _LockState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    holder: object | None = None
    expiry: asyncio.TimerHandle | None = None


class MemorySubscription:
    """One subscription to channels of a :class:`MemoryStore`.

    An async iterator of ``(channel, message)``; channels can be added and
    removed while it is consumed (what :class:`~fusion.helper.pubsub.FusionPubSub` uses).
    """

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._queue: asyncio.Queue[tuple[str, StoreMessage] | None] = asyncio.Queue()
        self.channels: set[str] = set()
        self._closed = False

    async def add(self, *channels: str) -> None:
        """Receive the messages of ``channels`` too."""
        for channel in channels:
            if channel not in self.channels:
                self.channels.add(channel)
                self._store._subscribers.setdefault(channel, set()).add(self)

    async def remove(self, *channels: str) -> None:
        """Stop receiving the messages of ``channels``."""
        for channel in channels:
            if channel in self.channels:
                self.channels.discard(channel)
                self._store._unsubscribe(channel, self)

    def _deliver(self, channel: str, message: StoreMessage) -> None:
        self._queue.put_nowait((channel, message))

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for channel in self.channels:
            self._store._unsubscribe(channel, self)
        self.channels.clear()
        self._queue.put_nowait(None)

    def __aiter__(self) -> MemorySubscription:
        return self

    async def __anext__(self) -> tuple[str, StoreMessage]:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # stay ended for later calls
            raise StopAsyncIteration
        return item


class MemoryStore(SharedStore):
    """:class:`~fusion.helper.store.SharedStore` kept in this process's memory.

    ``clock`` gives the seconds against which every TTL (keys, counters,
    bounded sets, histories) runs; tests pass one they advance instead of
    sleeping TTLs out. Lock leases run on the event loop's timer.
    """

    def __init__(
        self, url: str = "memory://", *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self._clock = clock
        self._values: dict[str, tuple[bytes, float | None]] = {}
        self._bounded: dict[str, dict[str, float]] = {}
        self._histories: dict[str, _History] = {}
        self._subscribers: dict[str, set[MemorySubscription]] = {}
        self._subscriptions: set[MemorySubscription] = set()
        self._locks: dict[str, _LockState] = {}
        # History ids increase store-wide, hence per channel, even when the
        # wall clock steps back or a channel's history expired and restarts.
        self._last_id = (0, 0)
        self._next_sweep = self._clock() + _SWEEP_INTERVAL

    # -- housekeeping -------------------------------------------------------
    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL
        for key in [k for k, (_, d) in self._values.items() if d is not None and d <= now]:
            del self._values[key]
        for key, members in list(self._bounded.items()):
            self._prune(key, members, now)
        for channel in [
            c for c, h in self._histories.items() if h.deadline is not None and h.deadline <= now
        ]:
            del self._histories[channel]

    def _prune(self, key: str, members: dict[str, float], now: float) -> None:
        for member in [m for m, d in members.items() if d <= now]:
            del members[member]
        if not members:
            del self._bounded[key]

    def _live(self, key: str, now: float) -> tuple[bytes, float | None] | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        deadline = entry[1]
        if deadline is not None and deadline <= now:
            del self._values[key]
            return None
        return entry

    # -- keys ---------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        entry = self._live(key, self._clock())
        return None if entry is None else entry[0]

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        now = self._clock()
        self._sweep(now)
        if only_if_absent and (self._live(key, now) is not None or key in self._bounded):
            return False
        self._bounded.pop(key, None)
        self._values[key] = (bytes(value), None if ttl is None else now + ttl)
        return True

    async def pop(self, key: str) -> bytes | None:
        entry = self._live(key, self._clock())
        if entry is None:
            return None
        del self._values[key]
        return entry[0]

    async def delete(self, *keys: str) -> int:
        now = self._clock()
        count = 0
        for key in keys:
            if self._live(key, now) is not None:
                del self._values[key]
                count += 1
            elif key in self._bounded:
                members = self._bounded[key]
                self._prune(key, members, now)
                if self._bounded.pop(key, None) is not None:
                    count += 1
        return count

    async def expire(self, key: str, ttl: float) -> bool:
        now = self._clock()
        entry = self._live(key, now)
        if entry is not None:
            self._values[key] = (entry[0], now + ttl)
            return True
        members = self._bounded.get(key)
        if members is not None:
            self._prune(key, members, now)
            if key in self._bounded:
                deadline = now + ttl
                for member, member_deadline in members.items():
                    members[member] = min(member_deadline, deadline)
                return True
        return False

    async def incr(self, key: str, *, ttl: float, amount: int = 1) -> int:
        now = self._clock()
        self._sweep(now)
        entry = self._live(key, now)
        if entry is None:
            if amount < 0:
                return 0
            self._values[key] = (str(amount).encode(), now + ttl)
            return amount
        try:
            value = int(entry[0]) + amount
        except ValueError:
            raise ValueError(f"key {key!r} does not hold an integer") from None
        # A counter never outlives its window, even over a key stored without one.
        deadline = entry[1] if entry[1] is not None else now + ttl
        self._values[key] = (str(value).encode(), deadline)
        return value

    async def ttl(self, key: str) -> float | None:
        now = self._clock()
        entry = self._live(key, now)
        if entry is not None:
            return None if entry[1] is None else max(entry[1] - now, 0.0)
        members = self._bounded.get(key)
        if members is not None:
            self._prune(key, members, now)
            if key in self._bounded:
                return max(members.values()) - now
        return None

    # -- bounded sets -------------------------------------------------------
    async def bounded_add(self, key: str, member: str, *, ttl: float, cap: int) -> bool:
        now = self._clock()
        self._sweep(now)
        members = self._bounded.get(key)
        if members is not None:
            self._prune(key, members, now)
            members = self._bounded.get(key)
        if members is None:
            if cap <= 0:
                return False
            self._values.pop(key, None)
            self._bounded[key] = {member: now + ttl}
            return True
        if member not in members and len(members) >= cap:
            return False
        members[member] = now + ttl
        return True

    async def bounded_remove(self, key: str, member: str) -> bool:
        members = self._bounded.get(key)
        if members is None:
            return False
        self._prune(key, members, self._clock())
        if key not in self._bounded or member not in members:
            return False
        del members[member]
        if not members:
            del self._bounded[key]
        return True

    async def bounded_count(self, key: str) -> int:
        members = self._bounded.get(key)
        if members is None:
            return 0
        self._prune(key, members, self._clock())
        return len(members)

    # -- pub/sub and history ------------------------------------------------
    def _next_id(self) -> str:
        millis = time.time_ns() // 1_000_000
        last_millis, last_seq = self._last_id
        self._last_id = (millis, 0) if millis > last_millis else (last_millis, last_seq + 1)
        return f"{self._last_id[0]}-{self._last_id[1]}"

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        history: int = 0,
        history_ttl: float | None = None,
    ) -> str | None:
        message_id: str | None = None
        if history > 0:
            now = self._clock()
            self._sweep(now)
            kept = self._histories.get(channel)
            if kept is not None and kept.deadline is not None and kept.deadline <= now:
                kept = None
            if kept is None:
                kept = self._histories[channel] = _History(deque(maxlen=history), None)
            elif kept.messages.maxlen != history:
                kept.messages = deque(kept.messages, maxlen=history)
            kept.deadline = None if history_ttl is None else now + history_ttl
            message_id = self._next_id()
            message = StoreMessage(message_id, bytes(data))
            kept.messages.append(message)
        else:
            message = StoreMessage(None, bytes(data))
        for subscription in self._subscribers.get(channel, ()):
            subscription._deliver(channel, message)
        return message_id

    def _unsubscribe(self, channel: str, subscription: MemorySubscription) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[channel]

    @asynccontextmanager
    async def subscribe(self, *channels: str) -> AsyncIterator[MemorySubscription]:
        subscription = MemorySubscription(self)
        self._subscriptions.add(subscription)
        await subscription.add(*channels)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            subscription._close()

    async def history(self, channel: str, after_id: str | None = None) -> list[StoreMessage]:
        kept = self._histories.get(channel)
        if kept is None:
            return []
        if kept.deadline is not None and kept.deadline <= self._clock():
            del self._histories[channel]
            return []
        after = history_cut(after_id)
        if after is None:
            return list(kept.messages)
        # Ids are increasing: walk back from the newest until the cut.
        newer: list[StoreMessage] = []
        for message in reversed(kept.messages):
            if message_id_key(message.id or "") <= after:
                break
            newer.append(message)
        newer.reverse()
        return newer

    # -- locks and life cycle -------------------------------------------------
    @asynccontextmanager
    async def lock(
        self,
        name: str,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - the lock's lease, fixed by SharedStore
        blocking_timeout: float | None = None,
    ) -> AsyncIterator[None]:
        state = self._locks.get(name)
        if state is None:
            state = self._locks[name] = _LockState()
        state.users += 1
        token = object()
        try:
            if not state.lock.locked():
                await state.lock.acquire()
            elif blocking_timeout is not None and blocking_timeout <= 0:
                raise TimeoutError(f"lock {name!r} is held by another task")
            else:
                # asyncio.timeout cancels the waiter cleanly; wait_for on 3.11 can
                # lose a lock acquired just as the timeout fires.
                try:
                    async with asyncio.timeout(blocking_timeout):
                        await state.lock.acquire()
                except TimeoutError:
                    raise TimeoutError(
                        f"lock {name!r} not acquired within {blocking_timeout} s"
                    ) from None
            state.holder = token
            # Like a Redis lock, a holder that overruns ``timeout`` loses it.
            state.expiry = asyncio.get_running_loop().call_later(
                timeout, self._expire_lock, state, token
            )
            try:
                yield
            finally:
                if state.holder is token:
                    if state.expiry is not None:
                        state.expiry.cancel()
                    state.holder = state.expiry = None
                    state.lock.release()
                else:
                    _LOGGER.warning(
                        "lock %r was held longer than its timeout (%s s)", name, timeout
                    )
        finally:
            state.users -= 1
            if state.users == 0 and self._locks.get(name) is state:
                del self._locks[name]

    def _expire_lock(self, state: _LockState, token: object) -> None:
        if state.holder is token:
            state.holder = state.expiry = None
            state.lock.release()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription._close()
        self._subscriptions.clear()
        self._values.clear()
        self._bounded.clear()
        self._histories.clear()
