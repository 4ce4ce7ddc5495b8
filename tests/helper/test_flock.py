"""fusion.helper.flock: two real processes contending for one lock file."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fusion_testing.clock import WAIT

from fusion.helper.flock import FileLock

# The other process: takes the lock, says so, holds it until its stdin closes.
HOLDER = """
import asyncio, sys
from fusion.helper.flock import FileLock

async def main() -> None:
    async with FileLock(sys.argv[1], shared=sys.argv[2] == "shared"):
        print("locked", flush=True)
        await asyncio.to_thread(sys.stdin.read)

asyncio.run(main())
"""


@asynccontextmanager
async def held_by_other_process(path: Path, mode: str) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(path),
        mode,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert line == b"locked\n"
        yield
    finally:
        process.stdin.close()
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def test_exclusive_excludes(tmp_path: Path) -> None:
    path = tmp_path / "case.lock"
    async with held_by_other_process(path, "exclusive"):
        for shared in (False, True):
            with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
                async with FileLock(path, shared=shared, timeout=0.2):
                    pass
    # Released when the other process lets go.
    async with FileLock(path, timeout=1) as lock:
        assert lock.locked
    assert not lock.locked


async def test_shared_coexist_but_exclude_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "case.lock"
    async with held_by_other_process(path, "shared"):
        # Taken while the other process holds its shared lock (else: TimeoutError).
        async with FileLock(path, shared=True, timeout=WAIT) as lock:
            assert lock.locked
        with pytest.raises(TimeoutError, match="exclusive lock"):
            async with FileLock(path, timeout=0.2):
                pass


async def test_waiter_gets_lock_on_release_without_blocking_loop(tmp_path: Path) -> None:
    path = tmp_path / "case.lock"
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    lock = FileLock(path, timeout=10)
    async with held_by_other_process(path, "exclusive"):
        waiter = asyncio.create_task(lock.acquire())
        tick_task = asyncio.create_task(ticker())
        await asyncio.sleep(0.2)
        assert not waiter.done()
    await asyncio.wait_for(waiter, 5)
    tick_task.cancel()
    assert ticks >= 5  # the loop kept running while the lock was awaited
    assert lock.locked
    lock.release()


async def test_other_process_waits_for_us(tmp_path: Path) -> None:
    path = tmp_path / "case.lock"
    script = (
        "import asyncio, sys\n"
        "from fusion.helper.flock import FileLock\n"
        "async def main():\n"
        "    try:\n"
        "        async with FileLock(sys.argv[1], shared=True, timeout=0.2):\n"
        "            print('locked')\n"
        "    except TimeoutError:\n"
        "        print('timeout')\n"
        "asyncio.run(main())\n"
    )

    async def other() -> bytes:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(path), stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await process.communicate()
        return stdout

    async with FileLock(path):
        assert await other() == b"timeout\n"
    async with FileLock(path, shared=True):
        assert await other() == b"locked\n"


async def test_misuse(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "x.lock")
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()
    async with lock:
        with pytest.raises(RuntimeError, match="already held"):
            await lock.acquire()
    with pytest.raises(FileNotFoundError):
        await FileLock(tmp_path / "missing" / "x.lock").acquire()
