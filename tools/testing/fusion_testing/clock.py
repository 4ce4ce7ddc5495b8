"""Time that tests move themselves, and waiting on conditions instead of sleeping.

- :class:`ManualClock`: a clock for :class:`~fusion.helper._store_memory.MemoryStore`
  (``MemoryStore(clock=clock)``) that only moves when the test advances it;
- :class:`StoreClock`: passes TTL time on either store: it advances a memory
  store's manual clock, and on Redis (whose own clock expires keys) waits, on a
  condition with a generous deadline, until Redis has expired what it must;
- :func:`eventually`: wait until a condition holds, failing after a deadline.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from fusion.helper._store_memory import MemoryStore
from fusion.helper.store import SharedStore, create_store

__all__ = ["WAIT", "ManualClock", "StoreClock", "eventually"]

WAIT = 30.0
"""Default overall deadline of a condition wait (seconds): generous, for a loaded machine."""

Condition = Callable[[], bool | Awaitable[bool]]


async def eventually(condition: Condition, what: str, *, within: float = WAIT) -> None:
    """Return as soon as ``condition()`` (sync or async) is true; fail after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


class ManualClock:
    """A monotonic clock that moves only by :meth:`advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds``."""
        assert seconds >= 0, "a monotonic clock never goes back"
        self.now += seconds


class StoreClock:
    """The TTL time of a test's store: manual on ``memory://``, Redis's own on Redis.

    ``manual`` is None on Redis. :meth:`create_store` builds a store on that
    time (to hand to ``FusionServer(store=...)``); :meth:`advance` passes
    ``seconds`` and checks ``until``: on memory at once (the TTL has run out
    by construction), on Redis by waiting until it holds.
    """

    def __init__(self, manual: ManualClock | None) -> None:
        self.manual = manual

    def create_store(self, url: str) -> SharedStore:
        """The store of ``url``; a memory store runs on the manual clock."""
        if self.manual is not None and url.startswith("memory://"):
            return MemoryStore(url, clock=self.manual)
        return create_store(url)

    async def advance(self, seconds: float, until: Condition, what: str) -> None:
        """Let ``seconds`` pass for the store's TTLs, then require ``until()``."""
        if self.manual is not None:
            self.manual.advance(seconds)
            result = until()
            if inspect.isawaitable(result):
                result = await result
            assert result, f"{what}: not so after {seconds} s"
            return
        await eventually(until, what, within=seconds + WAIT)
