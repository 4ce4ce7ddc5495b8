"""Run a command's ``main(argv)`` in-process (loaded by the root conftest).

- ``run_main``: a :class:`MainRunner`; ``run_main(main, *argv, stdin=..., env=...)``
  in a sync test, ``await run_main.in_thread(main, *argv, ...)`` in an async
  one (``main`` runs its own event loop, so not on the test's); both give the
  exit code and what the command wrote (a :class:`CliResult`).

Only the tests of the entry points themselves (console script, ``python -m``,
signals, a real ``serve``) start a process.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

__all__ = ["CliResult", "MainRunner", "run_main"]

Main = Callable[[Sequence[str]], int]


@dataclass
class CliResult:
    """Exit code and output of one command."""

    code: int
    stdout: str
    stderr: str


class MainRunner:
    """Calls ``main(argv)`` with ``stdin``, the environment minus ``FUSION_*`` plus
    ``env``, and its stdout/stderr captured."""

    def __init__(self, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self._capfd = capfd
        self._monkeypatch = monkeypatch

    @contextmanager
    def _context(self, stdin: str | None, env: Mapping[str, str] | None) -> Iterator[None]:
        with self._monkeypatch.context() as patch:
            for key in [key for key in os.environ if key.startswith("FUSION_")]:
                patch.delenv(key)
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            patch.setattr(sys, "stdin", io.StringIO(stdin or ""))
            self._capfd.readouterr()  # what came before is not this command's
            yield

    def _result(self, code: int) -> CliResult:
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = self._capfd.readouterr()
        return CliResult(code, out, err)

    @staticmethod
    def _call(main: Main, argv: Sequence[str]) -> int:
        try:
            return main(list(argv))
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)

    def __call__(
        self,
        main: Main,
        *argv: str,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CliResult:
        """Run ``main(argv)`` here (a sync test: no event loop running)."""
        with self._context(stdin, env):
            return self._result(self._call(main, argv))

    async def in_thread(
        self,
        main: Main,
        *argv: str,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        within: float = 60.0,
    ) -> CliResult:
        """Run ``main(argv)`` in a worker thread, the test's loop serving meanwhile."""
        with self._context(stdin, env):
            code = await asyncio.wait_for(asyncio.to_thread(self._call, main, argv), within)
            return self._result(code)


@pytest.fixture
def run_main(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> MainRunner:
    """Run commands' ``main(argv)`` in-process, output captured (see :class:`MainRunner`)."""
    return MainRunner(capfd, monkeypatch)
