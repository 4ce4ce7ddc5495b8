"""Finding the binaries of real services, starting them, and skipping or failing without them.

Importing it does not import pytest (only :func:`require_binary` needs it), so
the launchers (:mod:`fusion_testing.redis`, :mod:`fusion_testing.slapd`) and
the benchmarks can use it too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "ServiceStartError",
    "free_port",
    "port_accepts",
    "require_binary",
    "services_required",
    "wait_until_ready",
]

_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"]
)


class ServiceStartError(RuntimeError):
    """A service process exited, or did not answer in time, while starting."""


def services_required() -> bool:
    """True when FUSION_REQUIRE_SERVICES=1: a missing service fails instead of skipping."""
    return os.environ.get("FUSION_REQUIRE_SERVICES", "") == "1"


def require_binary(name: str, debian_package: str) -> Path:
    """Path of ``name``; skips the test (or fails, under FUSION_REQUIRE_SERVICES=1)."""
    import pytest

    found = shutil.which(name, path=_SEARCH_PATH)
    if found is None:
        message = f"{name} not found: apt-get install -y {debian_package}"
        if services_required():
            pytest.fail(message + " (FUSION_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(message)
    return Path(found)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(port: int, *, timeout: float = 0.2) -> bool:
    """Whether 127.0.0.1:``port`` accepts a TCP connection now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    name: str,
    timeout: float,
    interval: float = 0.01,
    output: Callable[[], str] | None = None,
) -> None:
    """Poll ``ready()`` every ``interval`` seconds until it is true.

    Raises :class:`ServiceStartError` when ``process`` exits first (with what
    ``output()`` returns, its log say, in the message) or when ``timeout``
    seconds pass; stopping the process and cleaning up is the caller's part.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            detail = output() if output is not None else ""
            raise ServiceStartError(f"{name} exited with {process.returncode} at start: {detail}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise ServiceStartError(f"{name} did not answer within {timeout} s")
        time.sleep(interval)
