"""A fixture that leaves the root logger as it found it (loaded by the root conftest)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

__all__ = ["restore_root_logger"]


@pytest.fixture
def restore_root_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ``FUSION_LOG_*`` variable during the test; afterwards the root logger
    has its handlers, its level and the record flags (``logging.logThreads``...)
    back (handlers the test added are closed)."""
    for name in ("FUSION_LOG_LEVEL", "FUSION_LOG_FORMAT", "FUSION_LOG_FILE"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    flags = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    yield
    logging.logThreads, logging.logProcesses, logging.logMultiprocessing = flags
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
