"""Finding the binaries of real services, and skipping or failing without them."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

__all__ = ["free_port", "require_binary", "services_required"]

_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"]
)


def services_required() -> bool:
    """True when FUSION_REQUIRE_SERVICES=1: a missing service fails instead of skipping."""
    return os.environ.get("FUSION_REQUIRE_SERVICES", "") == "1"


def require_binary(name: str, debian_package: str) -> Path:
    """Path of ``name``; skips the test (or fails, under FUSION_REQUIRE_SERVICES=1)."""
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
