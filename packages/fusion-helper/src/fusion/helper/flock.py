"""Advisory file locks between processes (``fcntl.flock``), awaited without blocking."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["FileLock"]

_FIRST_POLL = 0.005
_MAX_POLL = 0.1


class FileLock:
    """``async with FileLock(path):`` holds an exclusive (or ``shared=True``) lock.

    Acquisition polls with ``LOCK_NB`` and sleeps in between (backing off to
    100 ms), so the event loop is never blocked; after ``timeout`` seconds it
    raises TimeoutError. The lock file is created if missing and left in place
    (removing it would let two processes lock two different files). Locks belong
    to the open file, so two FileLock objects exclude each other even in one
    process. Not reentrant.
    """

    def __init__(
        self, path: Path | str, shared: bool = False, timeout: float | None = None
    ) -> None:
        self.path = Path(path)
        self.shared = shared
        self.timeout = timeout
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def _try_lock(self, fd: int) -> bool:
        operation = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this FileLock")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        delay = _FIRST_POLL
        try:
            while not self._try_lock(fd):
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        mode = "shared" if self.shared else "exclusive"
                        raise TimeoutError(
                            f"could not take the {mode} lock {self.path} within {self.timeout} s"
                        )
                    await asyncio.sleep(min(delay, left))
                else:
                    await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_POLL)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            raise RuntimeError(f"lock {self.path} is not held")
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
