"""The shared store: sessions, one-time keys, counters, pub/sub, history, locks.

One small interface, two implementations chosen by URL:

- ``memory://`` (default): in-process, for a single server process;
- ``redis://host:port/db`` or ``rediss://...``: Redis, for several replicas.

Every method raises :class:`StoreUnavailableError` when the backend cannot be
reached, so a server can answer 503 instead of 500.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import NamedTuple

__all__ = [
    "GetBatcher",
    "SharedStore",
    "StoreMessage",
    "StoreUnavailableError",
    "create_store",
    "history_cut",
    "message_id_key",
]


class StoreUnavailableError(Exception):
    """The shared store cannot be reached (Redis down, timeout, ...)."""


class StoreMessage(NamedTuple):
    """A pub/sub message: ``id`` is set when the message was kept in history."""

    id: str | None
    data: bytes


def message_id_key(message_id: str) -> tuple[int, int]:
    """Sort key of a history id (``"<milliseconds>-<sequence>"``); (-1, -1) if malformed."""
    head, _, tail = message_id.partition("-")
    try:
        return (int(head), int(tail or 0))
    except ValueError:
        return (-1, -1)


# Redis stream ids are two unsigned 64-bit numbers.
_MAX_ID_PART = 2**64 - 1


def history_cut(after_id: str | None) -> tuple[int, int] | None:
    """The ``(milliseconds, sequence)`` after which history is wanted, None for all.

    A malformed or out-of-range id (a client's garbage ``Last-Event-ID``)
    means "everything kept", never an error.
    """
    if after_id is None:
        return None
    cut = message_id_key(after_id)
    if cut[0] < 0 or cut[1] < 0 or cut[0] > _MAX_ID_PART or cut[1] > _MAX_ID_PART:
        return None
    return cut


class SharedStore(ABC):
    """What every replica of a service sees the same way."""

    url: str
    # True when each call is a network round trip (Redis): callers on hot paths
    # then coalesce their reads with a GetBatcher.
    remote: bool = False

    # -- keys ---------------------------------------------------------------
    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """Value of ``key``, or None when absent or expired."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys``, in order (None for each absent one); one round trip
        where the backend allows (MGET on Redis)."""
        return [await self.get(key) for key in keys]

    @abstractmethod
    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        """Store ``value``; with ``only_if_absent`` do nothing (False) if the key exists."""

    @abstractmethod
    async def pop(self, key: str) -> bytes | None:
        """Atomically get and delete ``key`` (one-time keys): only one caller wins."""

    @abstractmethod
    async def delete(self, *keys: str) -> int:
        """Delete keys; returns how many existed."""

    @abstractmethod
    async def expire(self, key: str, ttl: float) -> bool:
        """Set a new time to live; False when the key does not exist."""

    @abstractmethod
    async def incr(self, key: str, *, ttl: float, amount: int = 1) -> int:
        """Add ``amount`` to a counter and return it; ``ttl`` is set when the counter
        is created (fixed window). A negative ``amount`` (giving back a reservation)
        never creates the counter: it answers 0 when there is none."""

    @abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Seconds left before ``key`` expires; None when absent or persistent."""

    # -- bounded sets (capped collections of expiring members) ---------------
    @abstractmethod
    async def bounded_add(self, key: str, member: str, *, ttl: float, cap: int) -> bool:
        """Atomically drop expired members, then add ``member`` (expiring after ``ttl``)
        unless ``cap`` live members already exist (False)."""

    @abstractmethod
    async def bounded_remove(self, key: str, member: str) -> bool:
        """Remove ``member``; False when it was not there."""

    @abstractmethod
    async def bounded_count(self, key: str) -> int:
        """Number of live members."""

    # -- pub/sub and history -------------------------------------------------
    @abstractmethod
    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        history: int = 0,
        history_ttl: float | None = None,
    ) -> str | None:
        """Publish ``data`` to the subscribers of ``channel`` (best effort).

        With ``history > 0`` the message is first appended to the channel's
        bounded history (at most ``history`` messages kept, the whole history
        expiring ``history_ttl`` seconds after the last append) and gets an
        id, increasing per channel, returned and sent along with the message.
        """

    @abstractmethod
    def subscribe(
        self, *channels: str
    ) -> AbstractAsyncContextManager[AsyncIterator[tuple[str, StoreMessage]]]:
        """Raw upstream subscription yielding ``(channel, message)``.

        This is one upstream subscription: use :class:`fusion.helper.pubsub.FusionPubSub`
        to share it between many local subscribers. The iterator ends (or raises
        StoreUnavailableError) when the backend connection is lost.

        The iterator must also have ``async add(*channels)`` and ``async
        remove(*channels)`` (:class:`fusion.helper.pubsub.ChannelSubscription`),
        which FusionPubSub uses to change channels without a new connection.
        """

    @abstractmethod
    async def history(self, channel: str, after_id: str | None = None) -> list[StoreMessage]:
        """Messages kept for ``channel`` with an id greater than ``after_id`` (all when None),
        oldest first."""

    # -- locks and life cycle ------------------------------------------------
    @abstractmethod
    def lock(
        self, name: str, *, timeout: float = 30.0, blocking_timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Exclusive lock across replicas; held at most ``timeout`` seconds.

        Raises TimeoutError when not acquired within ``blocking_timeout``.
        """

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailableError when the backend does not answer."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""


class GetBatcher:
    """Coalesces the ``get`` calls of one event-loop iteration into one ``get_many``.

    On Redis a GET costs a round trip and, in redis-py, tens of microseconds of
    CPU for the client alone; concurrent requests reading their session in the
    same iteration then share one MGET. Each caller still gets the value the
    store holds after it asked (the MGET is sent after the iteration ends), or
    the store's error (:class:`StoreUnavailableError`).
    """

    def __init__(self, store: SharedStore, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> bytes | None:
        """Value of ``key``, fetched with the other keys asked in this iteration."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        pending = self._pending
        pending.append((key, future))
        if len(pending) == 1:
            loop.call_soon(self._send)
        elif len(pending) >= self.max_batch:
            self._send()
        return await future

    def _send(self) -> None:
        batch = self._pending
        if not batch:
            return  # already sent at max_batch
        self._pending = []
        task = asyncio.get_running_loop().create_task(self._fetch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, batch: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        try:
            values = await self.store.get_many([key for key, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every waiter gets the store's error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), value in zip(batch, values, strict=True):
            if not future.done():
                future.set_result(value)


def create_store(url: str = "memory://") -> SharedStore:
    """Build the store named by ``url`` (``memory://``, ``redis://``, ``rediss://``, ``unix://``).

    Redis URLs take redis-py's query options (``socket_timeout``, ...) and
    ``prefix``, the namespace of every key and channel (default ``fusion:``),
    so several services can share one Redis: ``redis://host:6379/0?prefix=timeline:``.
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        from fusion.helper._store_memory import MemoryStore

        return MemoryStore(url)
    if scheme in ("redis", "rediss", "unix"):
        try:
            from fusion.helper._store_redis import RedisStore
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ValueError(
                f"shared store {url!r} needs redis: pip install 'fusion-helper[redis]'"
            ) from exc
        return RedisStore(url)
    raise ValueError(f"unsupported shared store URL {url!r}: use memory:// or redis://host:port/db")
