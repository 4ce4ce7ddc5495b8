"""What a person sees: the ``fusion-client`` command in a pseudo-terminal of a fixed size.

The command runs as a process whose stdin, stdout and stderr are the slave
side of a ``pty`` (80 columns unless said); the test reads the master side
into a small screen (carriage returns overwrite, ``ESC [K`` clears the rest of
the line, a line longer than the terminal is recorded as an overflow) and
asserts on the lines it shows. The service is the tutorial's triage service
(two replicas on one real Redis).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from fusion_testing.fixtures_cli import MainRunner
from fusion_testing.fixtures_triage_cli import (
    EXAMPLES,
    TRIAGE_CASE_TYPE,
    TRIAGE_ROBOT_KEY,
    TriageReplicas,
    cli_argv,
    cli_env,
)

from fusion.client.cli import main

pytestmark = pytest.mark.redis

_ESCAPE = re.compile(rb"\x1b\[([0-9;?]*)([A-Za-z])")


class Screen:
    """The lines a terminal of ``columns`` shows for what it was sent."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.lines: list[list[str]] = [[]]
        self.column = 0
        self.overflow: list[str] = []  # lines the program wrote past the right edge

    def feed(self, data: bytes) -> None:
        position = 0
        text = data
        while position < len(text):
            match = _ESCAPE.match(text, position)
            if match:
                if match.group(2) == b"K":  # erase to the end of the line
                    del self.lines[-1][self.column :]
                position = match.end()
                continue
            char = text[position : position + 1]
            position += 1
            if char == b"\r":
                self.column = 0
            elif char == b"\n":
                self.lines.append([])
                self.column = 0
            elif char >= b" ":
                # UTF-8 continuation bytes belong to the previous character.
                if 0x80 <= char[0] < 0xC0 and self.column:
                    self.lines[-1][self.column - 1] += char.decode("latin-1")
                    continue
                line = self.lines[-1]
                if self.column == self.columns:
                    self.overflow.append("".join(line))
                if self.column < len(line):
                    line[self.column] = char.decode("latin-1")
                else:
                    line.append(char.decode("latin-1"))
                self.column += 1

    @property
    def text(self) -> list[str]:
        return [
            "".join(line).encode("latin-1").decode("utf-8", errors="replace").rstrip()
            for line in self.lines
        ]


class Terminal:
    """A process in a pseudo-terminal of ``columns`` x ``rows``, its output on a :class:`Screen`."""

    def __init__(self, argv: list[str], env: dict[str, str], *, columns: int = 80) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        env = {key: value for key, value in env.items() if key not in ("COLUMNS", "LINES")}
        self.screen = Screen(columns)
        self._master = master
        self._changed = threading.Condition()
        self._ended = False
        self.process = subprocess.Popen(
            argv, cwd=EXAMPLES, env={**env, "TERM": "xterm"},
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: every slave side is closed, the process ended
                data = b""
            with self._changed:
                if not data:
                    self._ended = True
                    self._changed.notify_all()
                    return
                self.screen.feed(data)
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 30.0) -> None:
        """Until the screen satisfies ``predicate`` (fails after ``timeout`` seconds)."""
        with self._changed:
            self._changed.wait_for(lambda: predicate(self.screen.text) or self._ended, timeout)
            assert predicate(self.screen.text), self.screen.text

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the process to end and its output to be read; its exit code."""
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        os.close(self._master)
        return code

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.finish()


@contextlib.contextmanager
def terminal(argv: list[str], env: dict[str, str], *, columns: int = 80) -> Iterator[Terminal]:
    term = Terminal(argv, env, columns=columns)
    try:
        yield term
    finally:
        if term.process.poll() is None:
            term.process.kill()
            term.finish()


def _robot(replicas: TriageReplicas) -> list[str]:
    return ["--url", replicas.one.url, "--api-key", TRIAGE_ROBOT_KEY]


def _create(run_main: MainRunner, replicas: TriageReplicas, home: Path, *args: str) -> str:
    env = {"XDG_CONFIG_HOME": str(home)}
    result = run_main(main, *_robot(replicas), "--json", "cases", "create", *args, env=env)
    assert result.code == 0, result
    guid: str = msgspec.json.decode(result.stdout)["guid"]
    return guid


LONG_NAME = "intrusion on the build farm, lateral movement to the payroll database servers"


def test_cases_list_fits_the_terminal(
    triage_replicas: TriageReplicas, run_main: MainRunner, tmp_path: Path
) -> None:
    guid = _create(run_main, triage_replicas, tmp_path, "--name", LONG_NAME, "--acs", "analysts")
    env = cli_env(tmp_path)
    argv = cli_argv(*_robot(triage_replicas), "cases", "list")
    with terminal(argv, env, columns=80) as term:
        assert term.finish() == 0
    screen = term.screen
    assert screen.overflow == []
    lines = [line for line in screen.text if line]
    assert lines[0].split() == ["GUID", "STATE", "CREATED", "ACS", "NAME"]
    row = next(line for line in lines if line.startswith(guid[:8]))
    assert len(row) <= 80
    # Too narrow for whole GUIDs: their first 8 characters (a prefix the command resolves),
    # the name cut with an ellipsis.
    assert guid not in row
    assert row.split()[0] == guid[:8]
    assert row.endswith("…")
    assert LONG_NAME[:20] in row

    # Wide enough: everything, whole.
    with terminal(argv, env, columns=200) as term:
        assert term.finish() == 0
    assert any(guid in line and line.endswith(LONG_NAME) for line in term.screen.text)
    # Piped (not a terminal): never cut.
    piped = run_main(main, *_robot(triage_replicas), "cases", "list")
    assert any(guid in line and line.endswith(LONG_NAME) for line in piped.stdout.splitlines())


def test_events_are_readable_lines(
    triage_replicas: TriageReplicas, run_main: MainRunner, tmp_path: Path
) -> None:
    guid = _create(run_main, triage_replicas, tmp_path, "--name", "watched host", "--set",
                   "severity=1")  # fmt: skip
    argv = cli_argv("--url", triage_replicas.two.url, "--api-key", TRIAGE_ROBOT_KEY,
                    "--case-type", TRIAGE_CASE_TYPE, "events", guid[:6])  # fmt: skip
    with terminal(argv, cli_env(tmp_path), columns=80) as term:
        term.wait_for(lambda lines: any("subscribers" in line for line in lines))
        updated = run_main(main, *_robot(triage_replicas), "cases", "update", guid,
                           "--set", "severity=3", "--description", "x" * 200)  # fmt: skip
        assert updated.code == 0, updated
        term.wait_for(lambda lines: any("update_case" in line for line in lines))
        assert term.interrupt() == 130
    screen = term.screen
    assert screen.overflow == []
    shown = [line for line in screen.text if line]
    subscribed = next(line for line in shown if "subscribers" in line)
    assert re.match(r"\d\d:\d\d:\d\d  subscribers +watching: robot  'watched host'$", subscribed)
    change = next(line for line in shown if "update_case" in line)
    assert re.match(r"\d\d:\d\d:\d\d  update_case +fusion  'watched host'  ", change), change
    assert "severity 1 → 3" in change
    assert change.endswith("…")  # the long description cut at the edge
    assert "Traceback" not in "\n".join(shown)


def test_download_and_upload_progress_on_a_terminal_only(
    triage_replicas: TriageReplicas, run_main: MainRunner, tmp_path: Path
) -> None:
    guid = _create(run_main, triage_replicas, tmp_path, "--name", "progress")
    sample = tmp_path / "dump.bin"
    sample.write_bytes(os.urandom(900_000))
    sha256 = hashlib.sha256(sample.read_bytes()).hexdigest()
    env = cli_env(tmp_path)
    upload = cli_argv(*_robot(triage_replicas), "upload", f"/api/triage/{guid}/samples",
                      str(sample))  # fmt: skip
    with terminal(upload, env, columns=80) as term:
        assert term.finish() == 0
    # The bar fits (a bar that wraps cannot redraw itself); the answer's JSON may wrap.
    assert not [line for line in term.screen.overflow if line.startswith("dump.bin")]
    bar = next(line for line in term.screen.text if line.startswith("dump.bin ["))
    assert re.search(r"\[#+\] 100%  878\.9 KiB / 878\.9 KiB  [0-9.]+ [KMG]?i?B/s  ETA 0:00$", bar)
    assert any(sha256 in line for line in term.screen.text)  # the answer, after the bar

    out = tmp_path / "out"
    out.mkdir()
    route = f"/api/triage/{guid}/samples/{sha256}/download"
    download = cli_argv(*_robot(triage_replicas), "call", "GET", route, "--download",
                        "-o", str(out))  # fmt: skip
    with terminal(download, env, columns=80) as term:
        assert term.finish() == 0
    assert not [line for line in term.screen.overflow if line.startswith("download")]
    lines = [line for line in term.screen.text if line]
    bar = next(line for line in lines if line.startswith("download ["))
    assert re.search(r"\[#+\] 100%  878\.9 KiB / 878\.9 KiB  .+/s  ETA 0:00$", bar), bar
    assert lines[-1] == str(out / "dump.bin")  # the path written, on stdout, after the bar
    assert hashlib.sha256((out / "dump.bin").read_bytes()).hexdigest() == sha256

    # A refused upload: the error on a line of its own, never after the bar.
    closed = run_main(main, *_robot(triage_replicas), "cases", "update", guid, "--close")
    assert closed.code == 0, closed
    with terminal(upload, env, columns=80) as term:
        assert term.finish() == 4
    error = [line for line in term.screen.text if "error" in line]
    assert len(error) == 1
    assert error[0].startswith(f"fusion-client: error: case {guid} is closed"), error

    # Piped: no bar at all, only the path on stdout.
    (out / "dump.bin").unlink()
    piped = subprocess.run(download, cwd=EXAMPLES, env=env, capture_output=True, timeout=60)
    assert piped.returncode == 0, piped
    assert piped.stderr == b""
    assert piped.stdout.decode() == f"{out / 'dump.bin'}\n"


def test_screen_helper_sees_overflow() -> None:
    # The screen's own check: a line past the edge is caught, a redrawn one is not.
    screen = Screen(10)
    screen.feed(b"0123456789abc\r\n")
    screen.feed(b"old text\rnew\x1b[K\r\n")
    assert screen.overflow == ["0123456789"]
    assert screen.text[1] == "new"
