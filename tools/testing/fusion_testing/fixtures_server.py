"""Pytest fixtures and helpers to run a Fusion server in tests (loaded by the root conftest).

- :func:`cheap_password_hash`: an argon2id hash cheap enough for tests;
- :func:`server_config`: a configuration builder (every API enabled, basic
  auth with a few users, API keys and a federation key, SQLite in a temp dir);
- ``fusion_server``: an async factory starting a :class:`FusionServer` (or any
  ``web.Application``) on a free loopback port, in the test's event loop;
- :class:`ServerProcess` and ``server_process``: a ``fusion-server serve``
  subprocess, for the CLI, two-process and fault tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from argon2 import PasswordHasher

from fusion.server.app import FusionServer
from fusion.server.config import FusionServerConfig, decode_config
from fusion_testing.services import ServiceStartError, free_port, port_accepts, wait_until_ready

__all__ = [
    "FEDERATION_KEY",
    "ROBOT_KEY",
    "TEST_USERS",
    "HTTPSessionFactory",
    "RunningServer",
    "ServerFactory",
    "ServerProcess",
    "call",
    "cheap_password_hash",
    "fusion_server",
    "http_sessions",
    "login",
    "server_config",
    "server_config_dict",
    "server_process",
    "write_config",
]

# Cheap parameters: the default hashes cost ~100 ms each, too slow for a suite.
_TEST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
_HASHES: dict[str, str] = {}

ROBOT_KEY = "robot-key-0123456789abcdef"
"""API key of the ``robot`` client (groups ``robots``)."""
FEDERATION_KEY = "federation-key-0123456789abcdef"
"""The federation key (username ``hub``)."""

TEST_USERS: dict[str, tuple[str, list[str]]] = {
    "alice": ("alice-password", ["analysts"]),
    "bob": ("bob-password", ["readers"]),
    "carol": ("carol-password", ["admins"]),
    "mallory": ("mallory-password", []),
}
"""username -> (password, groups) of the basic backend in :func:`server_config`."""


def cheap_password_hash(password: str) -> str:
    """An argon2id hash of ``password`` with test-cheap parameters (cached)."""
    found = _HASHES.get(password)
    if found is None:
        found = _HASHES[password] = _TEST_HASHER.hash(password)
    return found


def server_config_dict(data_dir: Path | str, **overrides: Any) -> dict[str, Any]:
    """The builtins of :func:`server_config` (to write to a file or tweak)."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": False},
        "shared_store": {"url": "memory://"},
        "storage": {"data_dir": str(data_dir)},
        "auth": {
            "backend": {
                "type": "basic",
                "users": [
                    {
                        "username": username,
                        "password_hash": cheap_password_hash(password),
                        "groups": groups,
                    }
                    for username, (password, groups) in TEST_USERS.items()
                ],
            },
            "api_keys": [{"username": "robot", "groups": ["robots"], "key": ROBOT_KEY}],
            "federation": {"username": "hub", "key": FEDERATION_KEY},
            "can_delete": ["admins", "robot"],
            "throttle": {"window": 60, "max_failures_per_username": 3, "max_failures_per_ip": 6},
        },
        "info": {"api": "fusion-test", "version": "1.2.3"},
        "constant": {"path": str(Path(data_dir) / "constant.yml"), "reload_interval": 0},
        "case": {},
    }
    for section, value in overrides.items():
        if value is None:
            config[section] = None
        elif isinstance(value, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **value}
        else:
            config[section] = value
    return config


def server_config(
    data_dir: Path | str,
    *,
    config_type: type[FusionServerConfig] = FusionServerConfig,
    **overrides: Any,
) -> FusionServerConfig:
    """A complete test configuration; ``overrides`` replace or merge whole sections.

    ``server_config(tmp_path, shared_store={"url": store_url}, case=None)``.
    """
    return decode_config(server_config_dict(data_dir, **overrides), config_type)


@dataclass
class RunningServer:
    """A server listening on loopback: ``url`` is its base URL (no trailing slash)."""

    app: web.Application
    runner: web.AppRunner
    port: int
    server: FusionServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


ServerFactory = Callable[..., Awaitable[RunningServer]]


async def _start(app: web.Application, server: FusionServer | None) -> RunningServer:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # Bound here, then handed over: no race on a port picked in advance.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    site = web.SockSite(runner, sock)
    await site.start()
    return RunningServer(app=app, runner=runner, port=port, server=server)


@pytest.fixture
async def fusion_server() -> AsyncIterator[ServerFactory]:
    """``await fusion_server(config_or_server_or_app, **FusionServer kwargs)`` -> RunningServer.

    Accepts a :class:`FusionServerConfig` (built with :class:`FusionServer`),
    a :class:`FusionServer`, or a ready ``web.Application``. Every server is
    stopped (cleanup contexts run) at the end of the test.
    """
    running: list[RunningServer] = []

    async def start(target: Any, **kwargs: Any) -> RunningServer:
        server: FusionServer | None = None
        if isinstance(target, FusionServerConfig):
            server = FusionServer(target, **kwargs)
            app = server.build()
        elif isinstance(target, FusionServer):
            server = target
            app = server.build()
        elif isinstance(target, web.Application):
            app = target
        else:
            raise TypeError(f"cannot start a server from {type(target).__name__}")
        started = await _start(app, server)
        running.append(started)
        return started

    try:
        yield start
    finally:
        for started in reversed(running):
            await started.stop()


class ServerProcess:
    """``python -m fusion.server serve ...`` in a subprocess, on a free loopback port.

    ``args`` are extra command-line arguments (``["--config", path]``); the
    port is chosen here. :meth:`start` waits until the port accepts
    connections; :meth:`stop` sends SIGTERM and waits for a clean exit.
    The server's stdout and stderr go to a temporary file (a pipe nobody
    reads until the end would fill up and block a chatty server); they are
    in :attr:`output` after :meth:`stop`.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        cwd: Path | str | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
        module: str = "fusion.server",
        command: Sequence[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        base = list(command) if command is not None else [sys.executable, "-m", module, "serve"]
        self.argv = [*base, *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.output = b""
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read_log(self) -> bytes:
        if self._log is None:
            return b""
        self._log.seek(0)
        data = self._log.read()
        self._log.close()
        self._log = None
        return data

    def start(self, timeout: float = 20.0) -> ServerProcess:
        # Closed in _read_log, when the process has exited.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_ready(
                self.process,
                lambda: port_accepts(self.port),
                name=f"fusion-server on port {self.port}",
                timeout=timeout,
                interval=0.02,
                output=self._exit_output,
            )
        except ServiceStartError:
            self.stop()
            raise
        return self

    def _exit_output(self) -> str:
        self.output += self._read_log()
        return repr(self.output.decode(errors="replace"))

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, and return the exit code (SIGKILL after ``timeout``)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output += self._read_log()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``server_process(args, env=..., cwd=...)``: a started ServerProcess, stopped at the end."""
    started: list[ServerProcess] = []

    def start(args: Sequence[str] = (), **kwargs: Any) -> ServerProcess:
        kwargs.setdefault("cwd", tmp_path)
        process = ServerProcess(args, **kwargs).start()
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in reversed(started):
            process.stop()


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a configuration dict as YAML (``.yml``/``.yaml``), JSON or TOML by suffix."""
    suffix = path.suffix.lower()
    if suffix in (".yml", ".yaml"):
        path.write_bytes(msgspec.yaml.encode(config))
    elif suffix == ".toml":
        path.write_bytes(msgspec.toml.encode(config))
    else:
        path.write_bytes(msgspec.json.encode(config))
    return path


async def call(
    session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    """One request: ``(status, decoded JSON body or None when empty)``."""
    async with session.request(method, path, **kwargs) as response:
        body = await response.read()
        return response.status, (msgspec.json.decode(body) if body else None)


async def login(
    session: aiohttp.ClientSession, username: str, password: str | None = None
) -> tuple[int, Any]:
    """``POST /api/auth/login`` (password from :data:`TEST_USERS` when omitted)."""
    if password is None:
        password = TEST_USERS[username][0]
    return await call(
        session,
        "POST",
        "/api/auth/login",
        json={"data": {"username": username, "password": password}},
    )


HTTPSessionFactory = Callable[..., aiohttp.ClientSession]


@pytest.fixture
async def http_sessions() -> AsyncIterator[HTTPSessionFactory]:
    """``http_sessions(base_url, **ClientSession kwargs)``: sessions closed at the end.

    Their cookie jar accepts cookies from IP addresses (aiohttp's default jar
    ignores them), so a login on ``127.0.0.1`` sticks.
    """
    sessions: list[aiohttp.ClientSession] = []

    def make(base_url: str, **kwargs: Any) -> aiohttp.ClientSession:
        kwargs.setdefault("cookie_jar", aiohttp.CookieJar(unsafe=True))
        session = aiohttp.ClientSession(base_url, **kwargs)
        sessions.append(session)
        return session

    try:
        yield make
    finally:
        for session in sessions:
            await session.close()


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The ``audit`` fields of the ``fusion.audit`` records ``caplog`` captured, in order."""
    return [
        record.audit  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == "fusion.audit"
    ]
