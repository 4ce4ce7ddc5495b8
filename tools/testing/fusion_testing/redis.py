"""A real ``redis-server`` on a loopback port, for tests and benchmarks.

Independent of pytest so the benchmarks can import it::

    server = RedisServer(Path("/usr/bin/redis-server"))
    server.start()
    ...  # use server.url
    server.stop()
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from fusion_testing.services import ServiceStartError, free_port, wait_until_ready

__all__ = ["RedisServer", "RedisServerError"]


class RedisServerError(ServiceStartError):
    """redis-server did not start or did not answer."""


def _encode_command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class RedisServer:
    """One ``redis-server`` process without persistence, in its own temporary directory.

    ``start()`` after ``stop()`` or ``kill()`` reuses the same port, which is
    what fault tests need: clients configured with :attr:`url` see the server
    go away and come back.
    """

    def __init__(self, binary: Path | str = "redis-server", *, port: int | None = None) -> None:
        found = shutil.which(str(binary), path="/usr/bin:/usr/sbin:/usr/local/bin:/bin")
        self.binary = Path(found) if found else Path(binary)
        self.port = port if port is not None else free_port()
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- life cycle ---------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Start the server (on the same port as before) and wait until it answers PING."""
        if self.running:
            return
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="fusion-redis-")
        self._process = subprocess.Popen(
            [
                str(self.binary),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._tmpdir.name,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            cwd=self._tmpdir.name,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until_ready(
                self._process,
                self._answers,
                name=f"redis-server on port {self.port}",
                timeout=timeout,
                interval=0.005,
                output=self._stderr,
            )
        except ServiceStartError as exc:
            self.kill()
            raise RedisServerError(str(exc)) from None

    def _answers(self) -> bool:
        try:
            return self.command("PING") == b"+PONG"
        except OSError:
            return False

    def _stderr(self) -> str:
        process = self._process
        if process is None or process.stderr is None:
            return ""
        return process.stderr.read().decode(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server gracefully (SIGTERM), SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- raw commands (no client library needed) ------------------------------
    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """Send one command, return its raw reply (first line, or a whole bulk string)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(_encode_command(*args))
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("redis-server closed the connection")
                reply += chunk
            head, _, rest = reply.partition(b"\r\n")
            if not head.startswith(b"$"):
                return head
            size = int(head[1:])
            if size < 0:
                return b""
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("redis-server closed the connection")
                rest += chunk
            return rest[:size]

    def flushall(self) -> None:
        self.command("FLUSHALL")

    def client_list(self) -> list[dict[str, str]]:
        """``CLIENT LIST`` parsed: one dict per connection (``cmd``, ``sub``, ``name``, ...)."""
        text = self.command("CLIENT", "LIST").decode()
        clients = []
        for line in text.splitlines():
            fields = dict(item.partition("=")[::2] for item in line.split(" ") if "=" in item)
            if fields:
                clients.append(fields)
        return clients

    def pubsub_clients(self) -> list[dict[str, str]]:
        """Connections subscribed to at least one channel or pattern."""
        return [
            client
            for client in self.client_list()
            if int(client.get("sub", "0")) > 0 or int(client.get("psub", "0")) > 0
        ]
