"""Measuring how long a block takes, in sync or async code."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

__all__ = ["Timer"]


class Timer:
    """Context manager (``with`` or ``async with``) measuring elapsed seconds.

    ``elapsed`` is the running time inside the block and the final duration after
    it. On exit ``callback(elapsed)`` is called and, with a ``logger``, one line
    ``"<name> took <seconds> s"`` is logged at ``level``. Reusable, not reentrant.
    """

    __slots__ = ("_end", "_start", "callback", "level", "logger", "name")

    def __init__(
        self,
        name: str = "block",
        *,
        callback: Callable[[float], None] | None = None,
        logger: logging.Logger | None = None,
        level: int = logging.DEBUG,
    ) -> None:
        self.name = name
        self.callback = callback
        self.logger = logger
        self.level = level
        self._start: float | None = None
        self._end: float | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since entering (running) or spent in the block (after); 0.0 before."""
        if self._start is None:
            return 0.0
        end = time.perf_counter() if self._end is None else self._end
        return end - self._start

    def start(self) -> Self:
        self._start = time.perf_counter()
        self._end = None
        return self

    def stop(self) -> float:
        if self._start is None:
            raise RuntimeError("Timer.stop() before start()")
        self._end = time.perf_counter()
        elapsed = self._end - self._start
        if self.callback is not None:
            self.callback(elapsed)
        if self.logger is not None:
            self.logger.log(self.level, "%s took %.6f s", self.name, elapsed)
        return elapsed

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
