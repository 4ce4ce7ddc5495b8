"""FusionSynchronizer: periodic passes, event-triggered syncs, failure isolation, clean stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from fusion.concept import Case, Event
from fusion.helper.store import SharedStore, create_store
from fusion.server.storage import SQLiteStorage
from fusion.server.synchronizer import FusionSynchronizer, FusionSynchronizerConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    storage = SQLiteStorage(tmp_path)
    await storage.startup()
    yield storage
    await storage.shutdown()


async def _cases(storage: SQLiteStorage, count: int) -> list[Case]:
    cases = [Case(name=f"case {index}") for index in range(count)]
    for case in cases:
        await storage.create_case(case)
    return cases


async def _wait_for(predicate: Callable[[], bool]) -> None:
    # Polling is simplest here: the conditions are plain attributes of the synchronizer.
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


async def test_periodic_passes_sync_every_case(storage: SQLiteStorage) -> None:
    cases = await _cases(storage, 5)
    seen: list[UUID] = []

    async def job(case: Case) -> None:
        seen.append(case.guid)

    sync = FusionSynchronizer(FusionSynchronizerConfig(interval=0.05), storage, sync_case=job)
    await sync.start()
    try:
        await _wait_for(lambda: sync.passes >= 3)
    finally:
        await sync.stop()
    assert {case.guid for case in cases} == set(seen)
    # Every pass covers every case exactly once.
    assert len(seen) >= 3 * len(cases)
    for guid in {case.guid for case in cases}:
        assert seen.count(guid) >= 3


async def test_one_failing_case_does_not_stop_the_others(
    storage: SQLiteStorage, caplog: pytest.LogCaptureFixture
) -> None:
    cases = await _cases(storage, 4)
    bad = cases[1].guid
    done: list[UUID] = []

    class Sync(FusionSynchronizer):
        async def sync_case(self, case: Case) -> None:
            if case.guid == bad:
                raise RuntimeError("boom")
            done.append(case.guid)

    sync = Sync(FusionSynchronizerConfig(interval=60), storage)
    with caplog.at_level(logging.ERROR, logger="fusion.server.synchronizer.sync"):
        await sync.sync_all()
    assert sorted(done) == sorted(case.guid for case in cases if case.guid != bad)
    assert any(str(bad) in record.getMessage() for record in caplog.records)
    assert sync.passes == 1


async def test_concurrency_is_limited_and_timeouts_cancel(storage: SQLiteStorage) -> None:
    await _cases(storage, 8)
    active = 0
    peak = 0

    async def job(case: Case) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.05 if case.name != "case 7" else 10)
        finally:
            active -= 1

    config = FusionSynchronizerConfig(interval=60, concurrency=3, case_timeout=0.2)
    sync = FusionSynchronizer(config, storage, sync_case=job)
    async with asyncio.timeout(3):
        await sync.sync_all()
    assert peak == 3
    assert active == 0


async def test_job_missing_is_reported(storage: SQLiteStorage) -> None:
    (case,) = await _cases(storage, 1)
    sync = FusionSynchronizer(FusionSynchronizerConfig(), storage)
    with pytest.raises(NotImplementedError):
        await sync.sync_case(case)


async def test_events_trigger_a_sync_of_their_case(
    storage: SQLiteStorage, store: SharedStore
) -> None:
    cases = await _cases(storage, 3)
    seen: list[UUID] = []
    deleted: list[UUID] = []
    synced = asyncio.Event()

    class Sync(FusionSynchronizer):
        async def sync_case(self, case: Case) -> None:
            seen.append(case.guid)
            synced.set()

        async def case_deleted(self, case_guid: UUID) -> None:
            deleted.append(case_guid)
            synced.set()

    # A long interval: only the first pass and the events cause syncs.
    config = FusionSynchronizerConfig(interval=3600)
    sync = Sync(config, storage, store=store)
    await sync.start()
    try:
        await _wait_for(lambda: sync.passes == 1)
        seen.clear()
        target = cases[2]
        event = Event(source="test", category="update_case", case=target)
        # The subscription starts in the background: publish until it is heard.
        async with asyncio.timeout(5):
            while not seen:
                synced.clear()
                await store.publish(config.events_channel, event.to_json())
                await asyncio.sleep(0.05)
        assert set(seen) == {target.guid}
        await store.publish(config.events_channel, b"not an event")
        gone = Case(name="gone")
        await store.publish(
            config.events_channel,
            Event(source="test", category="delete_case", case=gone).to_json(),
        )
        await _wait_for(lambda: deleted == [gone.guid])
    finally:
        await sync.stop()


async def test_stop_waits_for_running_syncs_then_cancels(storage: SQLiteStorage) -> None:
    await _cases(storage, 2)
    finished: list[str] = []
    started = asyncio.Event()

    async def job(case: Case) -> None:
        started.set()
        await asyncio.sleep(0.1 if case.name == "case 0" else 30)
        finished.append(case.name)

    config = FusionSynchronizerConfig(interval=3600, stop_timeout=0.5)
    sync = FusionSynchronizer(config, storage, sync_case=job)
    await sync.start()
    await started.wait()
    async with asyncio.timeout(3):
        await sync.stop()
    assert finished == ["case 0"]


_STANDALONE = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from fusion.concept import Case
    from fusion.server.storage import SQLiteStorage
    from fusion.server.synchronizer import FusionSynchronizer, FusionSynchronizerConfig

    async def main() -> None:
        storage = SQLiteStorage(Path(sys.argv[1]))
        await storage.startup()
        await storage.create_case(Case(name="one"))

        async def job(case: Case) -> None:
            print("synced", case.name, flush=True)
            await asyncio.sleep(0.2)
            print("finished", case.name, flush=True)

        sync = FusionSynchronizer(FusionSynchronizerConfig(interval=0.05), storage, sync_case=job)
        await sync.run()
        await storage.shutdown()
        print("stopped", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    env = dict(os.environ)
    process = subprocess.Popen(
        [sys.executable, "-c", _STANDALONE, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        # Wait until a sync is in progress, then signal the process.
        assert process.stdout.readline().startswith(b"synced one")
        process.send_signal(signum)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    # The running sync finished, then the process said goodbye: no traceback.
    assert lines[-2:] == ["finished one", "stopped"]
    assert b"Traceback" not in err


async def test_event_api_notifications_reach_the_synchronizer(
    storage: SQLiteStorage, store: SharedStore, aiohttp_server: Callable[..., Awaitable[Any]]
) -> None:
    from aiohttp import web

    from fusion.server.appkeys import EVENTS, STORE
    from fusion.server.event import FusionEventAPI, FusionEventConfig

    (case,) = await _cases(storage, 1)
    seen: list[UUID] = []

    async def job(synced: Case) -> None:
        seen.append(synced.guid)

    app = web.Application()
    app[STORE] = store
    FusionEventAPI(FusionEventConfig()).setup(app)
    sync = FusionSynchronizer(
        FusionSynchronizerConfig(interval=3600), storage, store=store, sync_case=job
    )
    app.cleanup_ctx.append(sync.cleanup_ctx)
    await aiohttp_server(app)
    await _wait_for(lambda: sync.passes == 1)
    seen.clear()
    events = app[EVENTS]
    for _ in range(100):
        await events.notify("update_case", case)
        if seen:
            break
        await asyncio.sleep(0.05)
    assert seen[0] == case.guid


async def test_replicas_sharing_a_store_sync_each_case_once(
    storage: SQLiteStorage, store_url: str
) -> None:
    cases = await _cases(storage, 4)
    runs: list[tuple[str, UUID]] = []
    # Two stores on one URL stand for two replicas (memory:// is one process: one store).
    first_store = create_store(store_url)
    second_store = create_store(store_url) if store_url != "memory://" else first_store

    def job_of(name: str) -> Callable[[Case], Awaitable[None]]:
        async def job(case: Case) -> None:
            runs.append((name, case.guid))
            await asyncio.sleep(0.2)

        return job

    config = FusionSynchronizerConfig(interval=3600, on_events=False)
    first = FusionSynchronizer(config, storage, store=first_store, sync_case=job_of("first"))
    second = FusionSynchronizer(config, storage, store=second_store, sync_case=job_of("second"))
    try:
        await asyncio.gather(first.sync_all(), second.sync_all())
    finally:
        await first_store.close()
        if second_store is not first_store:
            await second_store.close()
    assert sorted(guid for _, guid in runs) == sorted(case.guid for case in cases)


async def test_builder_runs_the_service_synchronizer(
    tmp_path: Path, store_url: str, fusion_server: Any, http_sessions: Any
) -> None:
    from fusion_testing.fixtures_server import ROBOT_KEY, call, server_config

    from fusion.server.app import FusionServer

    seen: list[str] = []

    class Service(FusionServer):
        def create_synchronizer(self) -> FusionSynchronizer | None:
            assert self.storage is not None
            config = self.config.synchronizer or FusionSynchronizerConfig(interval=3600)

            async def job(case: Case) -> None:
                seen.append(case.name)

            return FusionSynchronizer(
                config, self.storage, self.store, sync_case=job, pubsub=self.pubsub
            )

    config = server_config(
        tmp_path,
        shared_store={"url": store_url},
        event={},
        synchronizer={"interval": 3600},
    )
    running = await fusion_server(Service(config))
    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    # The subscription to the events channel starts in the background: retry until heard.
    for index in range(50):
        status, _ = await call(robot, "POST", "/api/case", json={"name": f"new {index}"})
        assert status == 200
        if seen:
            break
        await asyncio.sleep(0.1)
    assert seen
    assert seen[0].startswith("new ")
