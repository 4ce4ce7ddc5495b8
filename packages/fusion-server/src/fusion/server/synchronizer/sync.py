"""Runs a service's per-case sync job periodically and when case events arrive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any
from uuid import UUID

import msgspec
from aiohttp import web

from fusion.concept import Case
from fusion.helper.pubsub import FusionPubSub
from fusion.helper.store import SharedStore, StoreUnavailableError
from fusion.server.storage import FusionStorage
from fusion.server.synchronizer.config import FusionSynchronizerConfig

__all__ = ["FusionSynchronizer", "SyncJob"]

_LOGGER = logging.getLogger(__name__)

SyncJob = Callable[[Case], Awaitable[None]]
"""A service's per-case job: bring whatever the service keeps for ``case`` up to date."""


class _EventCaseGuid(msgspec.Struct):
    # Only the case GUID of an event matters here: the case itself is re-read from storage.
    class _Case(msgspec.Struct):
        guid: UUID

    case: _Case


_EVENT_DECODER = msgspec.json.Decoder(_EventCaseGuid)


class FusionSynchronizer:
    """Calls :meth:`sync_case` for every stored case, every ``config.interval`` seconds,
    and for one case as soon as an event about it arrives on the service's event channel.

    Give the job as ``sync_case=`` or override :meth:`sync_case` in a subclass.
    One case's failure is logged and never stops the others; at most
    ``config.concurrency`` cases run at once and a case never runs twice at
    the same time (an event arriving meanwhile queues one more run).

    Events come through ``pubsub`` (share the server's :class:`FusionPubSub`
    when running inside it) or, given only ``store``, a pub/sub of its own.

    Standalone: ``await synchronizer.run()`` stops on SIGINT/SIGTERM. Inside an
    aiohttp app: ``app.cleanup_ctx.append(synchronizer.cleanup_ctx)``.
    """

    def __init__(
        self,
        config: FusionSynchronizerConfig,
        storage: FusionStorage,
        store: SharedStore | None = None,
        sync_case: SyncJob | None = None,
        *,
        pubsub: FusionPubSub | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.store = store
        self._pubsub = pubsub
        self._own_pubsub: FusionPubSub | None = None
        self._job = sync_case
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._running: dict[UUID, asyncio.Task[None]] = {}
        self._again: set[UUID] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._wakeup = asyncio.Event()
        self._stopping = False
        self.passes = 0
        """Completed passes over every case (for tests and monitoring)."""

    # -- the job -------------------------------------------------------------
    async def sync_case(self, case: Case) -> None:
        """Synchronise one case; override it or pass ``sync_case=`` to the constructor."""
        if self._job is None:
            raise NotImplementedError("give FusionSynchronizer a sync_case job or override it")
        await self._job(case)

    async def case_deleted(self, case_guid: UUID) -> None:
        """Called when an event names a case that storage no longer has; default: nothing."""

    # -- scheduling ----------------------------------------------------------
    async def _run_one(self, case: Case) -> None:
        async with self._semaphore, contextlib.AsyncExitStack() as stack:
            store = self.store if self.config.exclusive else None
            if store is not None and not await self._lock_case(stack, store, case):
                return
            try:
                async with asyncio.timeout(self.config.case_timeout):
                    await self.sync_case(case)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                _LOGGER.error(
                    "sync of case %s took more than %ss: cancelled",
                    case.guid,
                    self.config.case_timeout,
                )
            except Exception:
                # One case's failure must never stop the others.
                _LOGGER.exception("sync of case %s failed", case.guid)

    async def _lock_case(
        self, stack: contextlib.AsyncExitStack, store: SharedStore, case: Case
    ) -> bool:
        # Replicas sharing the store all run their synchronizer: the lock makes
        # one of them sync a given case while the others skip it.
        timeout = self.config.case_timeout
        lease = timeout + 10 if timeout is not None else self.config.lock_lease
        try:
            await stack.enter_async_context(
                store.lock(f"sync:{case.guid}", timeout=lease, blocking_timeout=0)
            )
        except TimeoutError:
            _LOGGER.debug("case %s is being synchronised elsewhere", case.guid)
            return False
        except StoreUnavailableError as exc:
            _LOGGER.warning("case %s not synchronised: cannot lock it: %s", case.guid, exc)
            return False
        return True

    def _schedule(self, case: Case) -> asyncio.Task[None] | None:
        if self._stopping:
            return None
        running = self._running.get(case.guid)
        if running is not None:
            self._again.add(case.guid)
            return running
        task = asyncio.create_task(self._run_one(case), name=f"fusion-sync-{case.guid}")
        self._running[case.guid] = task
        task.add_done_callback(lambda _: self._done(case.guid))
        return task

    def _done(self, case_guid: UUID) -> None:
        del self._running[case_guid]
        if case_guid in self._again and not self._stopping:
            self._again.discard(case_guid)
            self._spawn(self.sync_one(case_guid))

    async def sync_one(self, case_guid: UUID) -> None:
        """Synchronise one case now (re-read from storage); waits for it to finish."""
        case = await self.storage.retrieve_case(case_guid)
        if case is None:
            try:
                await self.case_deleted(case_guid)
            except Exception:
                _LOGGER.exception("case_deleted(%s) failed", case_guid)
            return
        task = self._schedule(case)
        if task is not None:
            await asyncio.shield(task)

    async def sync_all(self) -> None:
        """One pass over every stored case; returns when every case has been tried."""
        cases = await self.storage.enumerate_cases()
        tasks = [task for case in cases if (task := self._schedule(case)) is not None]
        if tasks:
            await asyncio.wait(tasks)
        self.passes += 1

    # -- loops ---------------------------------------------------------------
    async def _periodic(self) -> None:
        while not self._stopping:
            try:
                await self.sync_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                _LOGGER.exception("cannot enumerate cases to synchronise")
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.interval):
                    await self._wakeup.wait()

    async def _listen(self, pubsub: FusionPubSub) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                # end_on_loss: events published during an outage are gone, so the
                # subscription ends and a full pass catches up once it is back.
                async with pubsub.subscribe(
                    self.config.events_channel, maxsize=10_000, end_on_loss=True
                ) as subscription:
                    if delay > 0.1:
                        self._wakeup.set()
                    delay = 0.1
                    async for message in subscription:
                        self._on_event(message.data)
                    if subscription.dropped:
                        _LOGGER.warning("synchronizer fell behind the events: full pass")
                    self._wakeup.set()
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as exc:
                _LOGGER.warning("synchronizer cannot follow the events: %s", exc)
                delay = max(delay, 0.2)
            except Exception:
                _LOGGER.exception("synchronizer event subscription failed")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_event(self, data: bytes) -> None:
        try:
            case_guid = _EVENT_DECODER.decode(data).case.guid
        except (msgspec.DecodeError, RecursionError):
            _LOGGER.warning("synchronizer ignored a malformed event")
            return
        self._spawn(self.sync_one(case_guid))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    def wake(self) -> None:
        """Start the next pass over every case now."""
        self._wakeup.set()

    # -- life cycle ------------------------------------------------------------
    async def start(self) -> None:
        """Start the periodic pass (and the event listener when a store is given)."""
        self._stopping = False
        self._tasks.append(asyncio.create_task(self._periodic(), name="fusion-sync-periodic"))
        if not self.config.on_events:
            return
        pubsub = self._pubsub
        if pubsub is None and self.store is not None:
            pubsub = self._own_pubsub = FusionPubSub(self.store)
        if pubsub is not None:
            self._tasks.append(asyncio.create_task(self._listen(pubsub), name="fusion-sync-events"))

    async def stop(self) -> None:
        """Stop scheduling, give running syncs ``config.stop_timeout`` seconds, cancel the rest."""
        self._stopping = True
        loops = list(self._tasks)
        for task in loops:
            task.cancel()
        running = list(self._running.values())
        if running:
            _done, pending = await asyncio.wait(running, timeout=self.config.stop_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*loops, return_exceptions=True)
        self._tasks.clear()
        if self._own_pubsub is not None:
            await self._own_pubsub.close()
            self._own_pubsub = None

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: runs while the app runs."""
        await self.start()
        yield
        await self.stop()

    async def run(self, stop_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        """Run until one of ``stop_signals`` arrives, then stop cleanly (standalone use).

        The storage (and store) must be started by the caller, who also closes them.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in stop_signals:
            loop.add_signal_handler(signum, stop.set)
        try:
            await self.start()
            _LOGGER.info("synchronizer started (interval %ss)", self.config.interval)
            await stop.wait()
            _LOGGER.info("synchronizer stopping")
            await self.stop()
        finally:
            for signum in stop_signals:
                loop.remove_signal_handler(signum)

    def __repr__(self) -> str:
        details: dict[str, Any] = {"running": len(self._running), "passes": self.passes}
        return f"<FusionSynchronizer {details}>"
