"""The Redis shared store (``redis://``, ``rediss://``, ``unix://``), for several replicas.

URL options beyond redis-py's own: ``?prefix=`` (key namespace, default
``fusion:``). redis-py options in the query (``socket_timeout``,
``socket_connect_timeout``, ``health_check_interval``, ...) override the
defaults below, which make a dead Redis fail fast.

Layout under the prefix ``P``: values and counters at ``P<key>``, bounded
sets (sorted sets scored by expiry in ms) at ``P<key>``, locks at
``P lock:<name>`` (holding the holder's random token), a channel's history (a
stream) at ``P history:<channel>``, and pub/sub channels at ``P<channel>``. A
pub/sub payload is ``<history id> <data>`` (empty id when the message is not
kept), so the id travels with the message it names.

A command is retried once on a broken connection only when running it twice
does no harm; the others (counters, pops, deletes, ``SET NX``, publishes) fail
with :class:`StoreUnavailableError` instead, since the first try may have run.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from fusion.helper.store import SharedStore, StoreMessage, StoreUnavailableError, history_cut

__all__ = ["RedisStore", "RedisSubscription"]

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_PREFIX = "fusion:"
# A refused connection fails at once; these bound a Redis that hangs.
DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_SOCKET_TIMEOUT = 2.0
DEFAULT_HEALTH_CHECK_INTERVAL = 30
# Connections per command pool (two pools: retried and never-retried commands);
# ``?max_connections=`` in the URL sets another.
DEFAULT_MAX_CONNECTIONS = 32
# How often a lock held by another is tried again.
_LOCK_POLL = 0.02
# How long one read of a pub/sub connection waits before looping (health checks run between).
_PUBSUB_READ_TIMEOUT = 5.0

# What a command on a pub/sub connection that just died raises. AttributeError:
# redis-py drops the connection's writer when its reader sees the socket
# close, and a command already on its way then writes to None.
_DEAD_CONNECTION_ERRORS = (RedisError, OSError, AttributeError)

_KEEPALIVE: dict[int, int] = {
    option: value
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
    if (option := getattr(socket, name, None)) is not None
}

_INCR = """
local amount = tonumber(ARGV[2])
if amount < 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local n = redis.call('INCRBY', KEYS[1], amount)
if n == 1 or redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# A lock is a key holding its holder's token. Taking it is idempotent: when
# the reply to a first try was lost and the client retries, the key already
# holds our token, which counts as taken (SET NX alone would answer "taken by
# someone" and leave our own lock standing until its lease ran out).
_LOCK_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# Only the holder deletes: 1 released, 0 gone already (lease expired), -1 taken by another.
_LOCK_RELEASE = """
local token = redis.call('GET', KEYS[1])
if token == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if token then return -1 end
return 0
"""

# Drop expired members, then add unless full; the set expires with its last member.
_BOUNDED_ADD = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return 1
"""
)

_BOUNDED_REMOVE = (
    _NOW_MS
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(score) > now then return 1 end
return 0
"""
)

_BOUNDED_COUNT = (
    _NOW_MS
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)

# One script so that the id order is the delivery order: XADD and PUBLISH
# run together, no other publish can come in between.
_PUBLISH_WITH_HISTORY = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '*', 'd', ARGV[2])
if tonumber(ARGV[4]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  redis.call('PERSIST', KEYS[1])
end
redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[2])
return id
"""


def _millis(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _safe_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return urlunsplit(parts._replace(query=""))
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc, query=""))


class RedisSubscription:
    """One dedicated Redis pub/sub connection.

    An async iterator of ``(channel, message)``; channels can be added and
    removed while it is consumed. When the connection is lost it raises
    :class:`StoreUnavailableError` once, then ends: it never resubscribes by
    itself, so a caller always learns that messages may have been missed.
    """

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._pubsub = store._pubsub_client().pubsub(ignore_subscribe_messages=True)
        self.channels: set[str] = set()
        self._ended = False
        # The pub/sub connection exists once a first channel is subscribed.
        self._connected = asyncio.Event()

    async def add(self, *channels: str) -> None:
        """Receive the messages of ``channels`` too."""
        new = [channel for channel in channels if channel not in self.channels]
        if not new:
            return
        if self._ended:
            raise self._store._unavailable(ConnectionError("subscription connection lost"))
        prefix = self._store.prefix
        try:
            await self._pubsub.subscribe(*(prefix + channel for channel in new))
        except _DEAD_CONNECTION_ERRORS as exc:
            raise self._lost(exc) from exc
        self.channels.update(new)
        self._connected.set()

    async def remove(self, *channels: str) -> None:
        """Stop receiving the messages of ``channels``.

        On a lost connection there is nothing left to unsubscribe: the
        channels are dropped here and nothing is sent.
        """
        old = [channel for channel in channels if channel in self.channels]
        if not old:
            return
        self.channels.difference_update(old)
        if self._ended:
            return
        prefix = self._store.prefix
        try:
            await self._pubsub.unsubscribe(*(prefix + channel for channel in old))
        except _DEAD_CONNECTION_ERRORS as exc:
            raise self._lost(exc) from exc

    def _lost(self, exc: BaseException) -> StoreUnavailableError:
        # A command that failed on the connection ends the subscription: the
        # iterator stops, so its consumer learns that messages may be missed
        # (redis-py would otherwise reconnect and resubscribe by itself).
        self._ended = True
        self._connected.set()
        return self._store._unavailable(exc)

    @property
    def ended(self) -> bool:
        """True once closed or once the connection was lost."""
        return self._ended

    def __aiter__(self) -> RedisSubscription:
        return self

    async def __anext__(self) -> tuple[str, StoreMessage]:
        prefix_length = len(self._store.prefix)
        while not self._ended:
            if not self._connected.is_set():
                await self._connected.wait()
                continue
            try:
                raw = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_PUBSUB_READ_TIMEOUT
                )
            except _DEAD_CONNECTION_ERRORS as exc:
                if self.ended:
                    break
                raise self._lost(exc) from exc
            if raw is None or raw["type"] != "message":
                continue
            head, _, data = raw["data"].partition(b" ")
            channel = raw["channel"][prefix_length:].decode()
            return channel, StoreMessage(head.decode() if head else None, data)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._ended = True
        self._connected.set()
        with suppress(RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]


class RedisStore(SharedStore):
    """:class:`~fusion.helper.store.SharedStore` on Redis (redis-py asyncio, one pool)."""

    remote = True

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.prefix = query.pop("prefix", DEFAULT_PREFIX)
        self._redis_url = urlunsplit(parts._replace(query=urlencode(query)))
        self._where = _safe_url(url)
        database = parts.path.strip("/")
        if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
            raise ValueError(
                f"invalid Redis URL {self._where!r}: database {database!r} is not a number"
            )
        options: dict[str, Any] = {
            "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
            "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
            "health_check_interval": DEFAULT_HEALTH_CHECK_INTERVAL,
            # An idle pub/sub connection to a vanished host is noticed within
            # about a minute instead of the kernel's two hours.
            "socket_keepalive": True,
            "socket_keepalive_options": _KEEPALIVE,
        }
        try:
            # Idempotent commands (reads, plain SET, PEXPIRE, bounded_add, the
            # lock's scripts): one immediate retry on a broken connection,
            # none on timeouts, which may have executed a command already.
            self._redis = self._client(Retry(NoBackoff(), 1, (RedisConnectionError,)), options)
            # The others are never sent twice: a connection that breaks after
            # the command ran would make a retry count, pop, publish or delete
            # a second time (or answer "not there" for what the first one
            # did). They fail with StoreUnavailableError instead. A pooled
            # socket that a restarted Redis closed is not a risk for them:
            # the pool checks it, and reconnects, before handing it out.
            self._redis_once = self._client(Retry(NoBackoff(), 0), options)
        except ValueError as exc:
            raise ValueError(f"invalid Redis URL {self._where!r}: {exc}") from exc
        self._options = options
        self._pubsub_redis: Redis | None = None
        self._subscriptions: set[RedisSubscription] = set()
        self._incr = self._redis_once.register_script(_INCR)
        self._bounded_add = self._redis.register_script(_BOUNDED_ADD)
        self._bounded_remove = self._redis_once.register_script(_BOUNDED_REMOVE)
        self._bounded_count = self._redis.register_script(_BOUNDED_COUNT)
        self._publish_with_history = self._redis_once.register_script(_PUBLISH_WITH_HISTORY)
        self._lock_acquire = self._redis.register_script(_LOCK_ACQUIRE)
        self._lock_release = self._redis.register_script(_LOCK_RELEASE)

    def _client(self, retry: Retry, options: dict[str, Any]) -> Redis:
        # A bounded pool that makes commands wait (up to the socket timeout) for a
        # free connection: a burst of requests must not open a connection each,
        # which a loaded Redis host answers with connect timeouts (503s).
        pool = BlockingConnectionPool.from_url(
            self._redis_url,
            max_connections=DEFAULT_MAX_CONNECTIONS,
            timeout=options["socket_timeout"],
            retry=retry,
            **options,
        )
        return Redis(connection_pool=pool)

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"redis shared store {self._where} unavailable: {exc}")

    async def _call(self, command: Awaitable[_T]) -> _T:
        """Await one Redis command: any failure of Redis or of the connection
        is a :class:`StoreUnavailableError` naming the store."""
        try:
            return await command
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _pubsub_client(self) -> Redis:
        # Pub/sub connections live in a pool of their own without retries: a
        # lost subscription must surface, not be silently resubscribed.
        if self._pubsub_redis is None:
            options = dict(self._options, retry=Retry(NoBackoff(), 0))
            self._pubsub_redis = Redis(
                connection_pool=ConnectionPool.from_url(self._redis_url, **options)
            )
        return self._pubsub_redis

    # -- keys ---------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call(self._redis.get(self.prefix + key))
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        prefix = self.prefix
        values: list[bytes | None] = await self._call(
            self._redis.mget([prefix + key for key in keys])
        )
        return values

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        # SET NX is not idempotent: a retry would answer False for a key the first try set.
        client = self._redis_once if only_if_absent else self._redis
        done = await self._call(
            client.set(
                self.prefix + key,
                value,
                px=None if ttl is None else _millis(ttl),
                nx=only_if_absent,
            )
        )
        return bool(done)

    async def pop(self, key: str) -> bytes | None:
        value: bytes | None = await self._call(self._redis_once.getdel(self.prefix + key))
        return value

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        count: int = await self._call(self._redis_once.delete(*(self.prefix + key for key in keys)))
        return count

    async def expire(self, key: str, ttl: float) -> bool:
        done = await self._call(self._redis.pexpire(self.prefix + key, _millis(ttl)))
        return bool(done)

    async def incr(self, key: str, *, ttl: float, amount: int = 1) -> int:
        try:
            value = await self._call(
                self._incr(keys=[self.prefix + key], args=[_millis(ttl), amount])
            )
        except StoreUnavailableError as exc:
            cause = exc.__cause__
            if isinstance(cause, ResponseError) and "not an integer" in str(cause):
                raise ValueError(f"key {key!r} does not hold an integer") from cause
            raise
        return int(value)

    async def ttl(self, key: str) -> float | None:
        left: int = await self._call(self._redis.pttl(self.prefix + key))
        return None if left < 0 else left / 1000

    # -- bounded sets -------------------------------------------------------
    async def bounded_add(self, key: str, member: str, *, ttl: float, cap: int) -> bool:
        added = await self._call(
            self._bounded_add(keys=[self.prefix + key], args=[member, _millis(ttl), cap])
        )
        return bool(added)

    async def bounded_remove(self, key: str, member: str) -> bool:
        removed = await self._call(self._bounded_remove(keys=[self.prefix + key], args=[member]))
        return bool(removed)

    async def bounded_count(self, key: str) -> int:
        count = await self._call(self._bounded_count(keys=[self.prefix + key]))
        return int(count)

    # -- pub/sub and history ------------------------------------------------
    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        history: int = 0,
        history_ttl: float | None = None,
    ) -> str | None:
        if history <= 0:
            await self._call(self._redis_once.publish(self.prefix + channel, b" " + data))
            return None
        message_id = await self._call(
            self._publish_with_history(
                keys=[self.prefix + "history:" + channel],
                args=[
                    self.prefix + channel,
                    data,
                    history,
                    0 if history_ttl is None else _millis(history_ttl),
                ],
            )
        )
        return message_id.decode() if isinstance(message_id, bytes) else str(message_id)

    @asynccontextmanager
    async def subscribe(self, *channels: str) -> AsyncIterator[RedisSubscription]:
        subscription = RedisSubscription(self)
        self._subscriptions.add(subscription)
        try:
            await subscription.add(*channels)
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            await subscription.aclose()

    async def history(self, channel: str, after_id: str | None = None) -> list[StoreMessage]:
        cut = history_cut(after_id)
        start = "-" if cut is None else f"({cut[0]}-{cut[1]}"
        try:
            entries = await self._call(
                self._redis.xrange(self.prefix + "history:" + channel, start, "+")
            )
        except StoreUnavailableError as exc:
            if isinstance(exc.__cause__, ResponseError):
                # An exclusive start past the largest possible id: nothing is newer.
                return []
            raise
        return [StoreMessage(entry_id.decode(), fields[b"d"]) for entry_id, fields in entries]

    # -- locks and life cycle -------------------------------------------------
    @asynccontextmanager
    async def lock(
        self,
        name: str,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - the lock's lease, fixed by SharedStore
        blocking_timeout: float | None = None,
    ) -> AsyncIterator[None]:
        key = self.prefix + "lock:" + name
        # This holder's own token: only it releases the lock, and a retried
        # acquire recognises the lock its lost first try took.
        token = secrets.token_hex(16)
        loop = asyncio.get_running_loop()
        deadline = None if blocking_timeout is None else loop.time() + blocking_timeout
        while True:
            # Had a first try run before the connection broke, the lock is
            # ours until its lease ends: nothing else can tell.
            acquired = await self._call(
                self._lock_acquire(keys=[key], args=[token, _millis(timeout)])
            )
            if acquired:
                break
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"lock {name!r} not acquired within {blocking_timeout} s")
            await asyncio.sleep(_LOCK_POLL if left is None else min(_LOCK_POLL, left))
        try:
            yield
        finally:
            try:
                released = await self._call(self._lock_release(keys=[key], args=[token]))
            except StoreUnavailableError as exc:
                # The lock expires by itself after ``timeout``.
                _LOGGER.warning("lock %r not released: %s", name, exc)
            else:
                if released != 1:
                    _LOGGER.warning(
                        "lock %r was held longer than its timeout (%s s)", name, timeout
                    )

    async def ping(self) -> None:
        await self._call(self._redis.execute_command("PING"))  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        self._subscriptions.clear()
        await self._redis.aclose(close_connection_pool=True)
        await self._redis_once.aclose(close_connection_pool=True)
        if self._pubsub_redis is not None:
            await self._pubsub_redis.aclose(close_connection_pool=True)
            self._pubsub_redis = None
