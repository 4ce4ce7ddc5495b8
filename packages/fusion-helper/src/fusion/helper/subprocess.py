"""Running a command from async code, never leaving it behind on timeout or cancel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

__all__ = ["CalledProcessError", "CompletedProcess", "run"]


class CalledProcessError(Exception):
    """A command run with ``check=True`` exited with a non-zero status."""

    def __init__(self, result: CompletedProcess) -> None:
        stderr = result.stderr.decode(errors="replace").strip()
        detail = f": {stderr[-500:]}" if stderr else ""
        super().__init__(f"{result.args[0]} exited with status {result.returncode}{detail}")
        self.result = result


class CompletedProcess(NamedTuple):
    """What a finished command left: its argv, exit status and captured output."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    def check(self) -> CompletedProcess:
        """Self when the status is 0, else raise :class:`CalledProcessError`."""
        if self.returncode != 0:
            raise CalledProcessError(self)
        return self


async def _kill(process: asyncio.subprocess.Process) -> None:
    # The command runs in its own session: kill the whole group, so children it
    # spawned do not survive it holding our pipes open.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()


async def run(
    *argv: str | Path,
    timeout: float | None = None,  # noqa: ASYNC109 - the timeout bounds the child, not a wait
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    check: bool = False,
) -> CompletedProcess:
    """Run ``argv`` (no shell) and capture its output.

    After ``timeout`` seconds, or when the awaiting task is cancelled, the process
    (and its process group) is killed and reaped before TimeoutError or
    CancelledError propagates. ``check=True`` raises :class:`CalledProcessError`
    on a non-zero status.
    """
    if not argv:
        raise ValueError("run() needs a command")
    args = tuple(os.fspath(arg) for arg in argv)
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=None if env is None else dict(env),
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate(stdin)
    except TimeoutError:
        await asyncio.shield(_kill(process))
        raise TimeoutError(f"{args[0]} did not finish within {timeout} s: killed") from None
    except BaseException:
        await asyncio.shield(_kill(process))
        raise
    assert process.returncode is not None
    result = CompletedProcess(args, process.returncode, stdout, stderr)
    return result.check() if check else result
