"""fusion.helper.timer."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from fusion.helper.timer import Timer


def test_sync_timer() -> None:
    timer = Timer()
    assert timer.elapsed == 0.0
    with timer as entered:
        assert entered is timer
        time.sleep(0.02)
        running = timer.elapsed
        assert running >= 0.02
    final = timer.elapsed
    assert final >= running
    time.sleep(0.01)
    assert timer.elapsed == final  # frozen after the block


async def test_async_timer_with_callback() -> None:
    seen: list[float] = []
    async with Timer(callback=seen.append) as timer:
        await asyncio.sleep(0.02)
    assert seen == [timer.elapsed]
    assert 0.02 <= timer.elapsed < 1.0


def test_timer_logs(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("fusion.test.timer")
    with caplog.at_level(logging.INFO, logger="fusion.test.timer"):
        with Timer("sync job", logger=logger, level=logging.INFO):
            pass
        with Timer("quiet", logger=logger):  # DEBUG: filtered out
            pass
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("sync job took ")
    assert caplog.records[0].getMessage().endswith(" s")


def test_timer_on_exception_and_reuse() -> None:
    seen: list[float] = []
    timer = Timer(callback=seen.append)
    with pytest.raises(KeyError), timer:
        raise KeyError("x")
    assert len(seen) == 1
    with timer:
        pass
    assert len(seen) == 2
    with pytest.raises(RuntimeError, match="before start"):
        Timer().stop()
