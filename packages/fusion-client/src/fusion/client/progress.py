"""Progress of a transfer (upload or download), as one typed value per callback."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

__all__ = ["ProgressMeter", "TransferProgress", "TransferProgressCallback"]


class TransferProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Where a transfer stands: handed to a :data:`TransferProgressCallback`.

    ``rate`` is the mean rate since the transfer started (bytes per second);
    ``eta`` the seconds left at that rate, ``None`` while the total or the rate
    is unknown (``0.0`` once done).
    """

    done: int
    """Bytes transferred so far."""
    total: int | None
    """Bytes in all (the file's size, the ``Content-Length``), ``None`` when unknown."""
    rate: float
    eta: float | None

    @property
    def fraction(self) -> float | None:
        """``done / total`` (0.0 to 1.0), ``None`` when the total is unknown."""
        if self.total is None:
            return None
        return 1.0 if self.total == 0 else min(self.done / self.total, 1.0)


TransferProgressCallback = Callable[[TransferProgress], None]
"""Called with a :class:`TransferProgress` once at the start (``done=0``) and
after each chunk; the last call has ``done`` equal to the bytes transferred."""


class ProgressMeter:
    """Counts a transfer's bytes and reports each step to ``callback`` as a TransferProgress."""

    def __init__(self, callback: TransferProgressCallback | None, total: int | None) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self._started = time.monotonic()

    def start(self) -> None:
        """Report the start (``done=0``), and count from now (again, if the body is re-sent)."""
        self._started = time.monotonic()
        self.done = 0
        self.advance(0)

    def advance(self, count: int) -> None:
        self.done += count
        if self.callback is None:
            return
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta: float | None = None
        if self.total is not None:
            left = max(self.total - self.done, 0)
            eta = 0.0 if left == 0 else (left / rate if rate > 0 else None)
        self.callback(TransferProgress(done=self.done, total=self.total, rate=rate, eta=eta))
