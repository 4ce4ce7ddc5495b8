"""``fusion-server serve --workers N`` under test: the master process, its log, its workers' PIDs.

The tests' service (:data:`PID_APP`, written next to the configuration) has
one extra route, ``GET /api/test/pid``, answering the PID of the worker that
served it; requests over fresh connections land on the workers the kernel
picks (SO_REUSEPORT), so the PIDs seen are the workers serving the port.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import aiohttp

from fusion_testing.services import free_port, port_accepts

__all__ = ["PID_APP", "PID_ROUTE", "WorkersProcess", "fetch_pid", "process_gone", "write_pid_app"]

PID_ROUTE = "/api/test/pid"
PID_APP = """
import os

from aiohttp import web

from fusion.server import FusionServer, FusionServerConfig


async def pid(request: web.Request) -> web.Response:
    return web.json_response({"status": 200, "data": {"pid": os.getpid()}, "count": 1})


def make(config: FusionServerConfig) -> FusionServer:
    server = FusionServer(config)
    server.add_routes([web.get("/api/test/pid", pid)])
    return server
"""


def write_pid_app(directory: Path) -> str:
    """Write the PID service as ``pidapp.py`` in ``directory``; its ``--app`` reference."""
    (directory / "pidapp.py").write_text(PID_APP)
    return "pidapp:make"


async def fetch_pid(url: str) -> int:
    """The PID of the worker answering one request over a new connection."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(url, connector=connector) as session,
        session.get(PID_ROUTE) as response,
    ):
        assert response.status == 200, await response.text()
        body = await response.json()
        pid: int = body["data"]["pid"]
        return pid


class WorkersProcess:
    """``python -m fusion.server serve ARGS --host 127.0.0.1 --port P`` with its log in a file."""

    def __init__(
        self, args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.argv = [
            sys.executable,
            "-m",
            "fusion.server",
            "serve",
            *args,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.log_path = cwd / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def launch(self) -> WorkersProcess:
        """Start the process, without waiting for anything."""
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def start(self, timeout: float = 60.0) -> WorkersProcess:
        """Start the process and wait until its port accepts connections."""
        self.launch()
        self.wait_for(lambda: port_accepts(self.port), "the port to accept", timeout)
        return self

    def wait_for(
        self,
        condition: Callable[[], bool],
        what: str,
        timeout: float = 60.0,
        *,
        while_running: bool = True,
    ) -> None:
        """Poll ``condition`` until true; fails naming ``what`` and the log (also when
        the process exits first, unless ``while_running`` is false)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if while_running and self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"server exited waiting for {what}: {self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.log()}")
            time.sleep(0.02)

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log, once it is written."""
        found: list[re.Match[str]] = []

        def matched() -> bool:
            match = re.search(pattern, self.log())
            if match is not None:
                found.append(match)
            return match is not None

        self.wait_for(matched, f"log line {pattern!r}", timeout)
        return found[0]

    async def pids(self, until: Callable[[set[int]], bool], within: float = 60.0) -> set[int]:
        """Worker PIDs seen over fresh connections until ``until(seen)``."""
        seen: set[int] = set()
        async with asyncio.timeout(within):
            while not until(seen):
                seen.add(await fetch_pid(self.url))
        return seen

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the master and return its exit code (SIGKILL after ``timeout``)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return re.search(r"^State:\s+Z", status, re.MULTILINE) is not None
