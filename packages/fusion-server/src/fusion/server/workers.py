"""Several worker processes on one port: the master of ``fusion-server serve --workers N``.

The master binds nothing: it starts N worker processes (each a ``python -m
fusion.server serve ... --worker-of <master pid>`` that binds the port with
SO_REUSEPORT, so the kernel spreads connections over them), restarts one that
exits (at once when it had run for a while, after a growing delay when it
keeps dying young, so a crash loop does not spin), and on SIGTERM or SIGINT
forwards the signal to every worker, waits for them to finish their requests,
and kills those still running after the grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

__all__ = ["run_workers"]

_LOGGER = logging.getLogger("fusion.server.workers")

# A worker that ran this long before exiting is restarted at once; one that
# died younger waits _FIRST_DELAY, doubling per young death up to _MAX_DELAY.
_STABLE_AFTER = 10.0
_FIRST_DELAY = 0.5
_MAX_DELAY = 30.0
# The master's loop: how often it looks at its workers.
_POLL = 0.1
# Beyond shutdown_timeout, what a worker gets to close its stores and streams.
_CLEANUP_GRACE = 5.0


@dataclass
class _Worker:
    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    young_deaths: int = 0
    restart_at: float = 0.0


def _start(worker: _Worker, command: Sequence[str], env: Mapping[str, str] | None) -> None:
    # Its own process group: a Ctrl-C in the terminal reaches the master only,
    # which forwards it once (a second SIGINT would interrupt the worker's cleanup).
    worker.process = subprocess.Popen(  # noqa: S603 - the master's own command line
        list(command), env=env, process_group=0
    )
    worker.started = time.monotonic()
    _LOGGER.info("worker %d started (pid %d)", worker.number, worker.process.pid)


def _reap(worker: _Worker, on_exit: Callable[[int], None] | None) -> None:
    """Note a worker that exited, and when to start it again."""
    process = worker.process
    assert process is not None
    worker.process = None
    lived = time.monotonic() - worker.started
    if on_exit is not None:
        on_exit(process.pid)
    if lived >= _STABLE_AFTER:
        worker.young_deaths = 0
        delay = 0.0
    else:
        delay = min(_MAX_DELAY, _FIRST_DELAY * 2**worker.young_deaths)
        worker.young_deaths += 1
    worker.restart_at = time.monotonic() + delay
    code = process.returncode
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    _LOGGER.warning(
        "worker %d (pid %d) %s after %.1f s; restarting it in %.1f s",
        worker.number,
        process.pid,
        how,
        lived,
        delay,
    )


def _stop(
    workers: list[_Worker], signum: int, timeout: float, on_exit: Callable[[int], None] | None
) -> None:
    running = [worker for worker in workers if worker.process is not None]
    for worker in running:
        assert worker.process is not None
        _LOGGER.info(
            "stopping worker %d (pid %d): %s",
            worker.number,
            worker.process.pid,
            signal.Signals(signum).name,
        )
        worker.process.send_signal(signum)
    deadline = time.monotonic() + timeout
    for worker in running:
        process = worker.process
        assert process is not None
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _LOGGER.warning(
                "worker %d (pid %d) still running after %.1f s: killing it",
                worker.number,
                process.pid,
                timeout,
            )
            process.kill()
            process.wait()
        if on_exit is not None:
            on_exit(process.pid)
        _LOGGER.info(
            "worker %d (pid %d) stopped (code %d)", worker.number, process.pid, process.returncode
        )


def run_workers(
    command: Sequence[str],
    count: int,
    *,
    shutdown_timeout: float,
    env: Mapping[str, str] | None = None,
    on_exit: Callable[[int], None] | None = None,
) -> int:
    """Run ``count`` copies of ``command`` until SIGTERM or SIGINT; returns 0.

    A copy that exits is started again (see the module's docstring for the
    back-off). On a signal, every copy receives it and has ``shutdown_timeout``
    seconds (plus a few for its cleanup) to exit before it is killed.
    ``on_exit(pid)`` is called for each copy that exited (metrics forget its
    live gauges). Call it from the main thread (signal handlers).
    """
    received: list[int] = []

    def handle(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}
    workers = [_Worker(number) for number in range(1, count + 1)]
    try:
        for worker in workers:
            _start(worker, command, env)
        while not received:
            now = time.monotonic()
            for worker in workers:
                if worker.process is not None and worker.process.poll() is not None:
                    _reap(worker, on_exit)
                if worker.process is None and now >= worker.restart_at and not received:
                    _start(worker, command, env)
            time.sleep(_POLL)
        signum = received[0]
    except BaseException:
        signum = signal.SIGTERM
        raise
    finally:
        _stop(workers, signum, shutdown_timeout + _CLEANUP_GRACE, on_exit)
        for number, handler in previous.items():
            signal.signal(number, handler)
    _LOGGER.info("all %d workers stopped (pid %d)", count, os.getpid())
    return 0
