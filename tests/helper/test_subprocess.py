"""fusion.helper.subprocess with real child processes."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from fusion.helper.subprocess import CalledProcessError, CompletedProcess, run

PY = sys.executable


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that may never come counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _wait_gone(pid: int) -> bool:
    for _ in range(100):
        if not _alive(pid):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_run_captures(tmp_path: Path) -> None:
    code = "import os, sys; print(os.getcwd()); print(os.environ.get('X')); sys.stderr.write('err')"
    result = await run(PY, "-c", code, cwd=tmp_path, env={"X": "value"})
    assert isinstance(result, CompletedProcess)
    assert result.returncode == 0
    assert result.stdout.decode().splitlines() == [str(tmp_path), "value"]
    assert result.stderr == b"err"
    assert result.args == (PY, "-c", code)


async def test_run_stdin_and_status() -> None:
    result = await run(
        PY, "-c", "import sys; data = sys.stdin.read(); sys.exit(len(data))", stdin=b"12345"
    )
    assert result.returncode == 5
    with pytest.raises(CalledProcessError, match="exited with status 3: bad input") as info:
        await run(PY, "-c", "import sys; sys.stderr.write('bad input'); sys.exit(3)", check=True)
    assert info.value.result.returncode == 3
    assert (await run("true", check=True)).returncode == 0


async def test_run_errors() -> None:
    with pytest.raises(ValueError, match="needs a command"):
        await run()
    with pytest.raises(FileNotFoundError):
        await run("/nonexistent/fusion-binary")


async def test_timeout_kills_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    # The child starts a grandchild and both sleep: both must be gone after the timeout.
    code = (
        "import subprocess, sys, time\n"
        f"g = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)'])\n"
        "import os\n"
        f"open({str(pidfile)!r}, 'w').write(f'{{os.getpid()}} {{g.pid}}')\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"did not finish within 1\.0 s"):
        await run(PY, "-c", code, timeout=1.0)
    assert time.monotonic() - started < 5
    child, grandchild = (int(pid) for pid in pidfile.read_text().split())
    assert not _alive(child)  # reaped by run()
    assert await _wait_gone(grandchild)


async def test_cancel_kills_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    task = asyncio.create_task(run(PY, "-c", code))
    for _ in range(250):
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.02)
    pid = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(pid)
