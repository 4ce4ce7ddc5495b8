"""The fusion-client command against the loopback protocol server: ``main(argv)``
in-process, and its entry points (console script, ``python -m``, SIGINT) as processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from fusion_testing.fixtures_cli import CliResult, MainRunner
from fusion_testing.services import free_port

from fusion.client.cli import main, session_file

if TYPE_CHECKING:
    from tests.client.conftest import RunningServer

RunCli = Callable[..., Awaitable[CliResult]]


def _command() -> list[str]:
    # The installed console script when present, else the module entry point.
    script = shutil.which("fusion-client", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "fusion.client"]


@pytest.fixture
def run_cli(run_main: MainRunner) -> RunCli:
    """``await run_cli(*argv, home=..., stdin=..., env=...)``: ``main(argv)`` in-process."""

    async def run(
        *args: str, home: Path, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> CliResult:
        environment = {"XDG_CONFIG_HOME": str(home), "HOME": str(home), **(env or {})}
        return await run_main.in_thread(main, *args, stdin=stdin, env=environment)

    return run


def assert_clean_error(result: CliResult, code: int, fragment: str) -> None:
    assert result.code == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fusion-client: error: ")
    assert fragment in lines[0]


async def test_info_table_and_json(
    protocol_server: RunningServer, run_cli: RunCli, tmp_path: Path
) -> None:
    result = await run_cli("--url", protocol_server.url, "info", home=tmp_path)
    assert result.code == 0, result
    assert "fusion-test" in result.stdout
    assert "9.9.9" in result.stdout
    result = await run_cli("--json", "info", home=tmp_path, env={"FUSION_URL": protocol_server.url})
    assert result.code == 0, result
    assert msgspec.json.decode(result.stdout) == {"api": "fusion-test", "version": "9.9.9"}


@pytest.mark.parametrize(
    "command",
    [_command(), [sys.executable, "-m", "fusion.client"]],
    ids=["console-script", "python-m"],
)
async def test_entry_points(
    protocol_server: RunningServer, tmp_path: Path, command: list[str]
) -> None:
    process = await asyncio.create_subprocess_exec(
        *command,
        "--url",
        protocol_server.url,
        "--json",
        "info",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert msgspec.json.decode(out)["api"] == "fusion-test"


async def test_login_keeps_session_then_logout(
    protocol_server: RunningServer, run_cli: RunCli, tmp_path: Path
) -> None:
    url = protocol_server.url
    result = await run_cli(
        "--url", url, "login", "-u", "admin", "--password-stdin",
        home=tmp_path, stdin=protocol_server.password + "\n",
    )  # fmt: skip
    assert result.code == 0, result
    assert "logged in as admin" in result.stdout
    saved = tmp_path / "fusion-client" / "sessions" / session_file(url).name
    assert saved.exists()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "fusion-client").stat().st_mode) == 0o700
    whoami = await run_cli("--url", url, "whoami", home=tmp_path)
    assert (whoami.code, whoami.stdout) == (0, "admin (admins)\n")

    created = await run_cli(
        "--url", url, "--json", "cases", "create", "--name", "intrusion", "--acs", "a,b",
        home=tmp_path,
    )  # fmt: skip
    assert created.code == 0, created
    case = msgspec.json.decode(created.stdout)
    assert case["name"] == "intrusion"
    assert case["acs"] == ["a", "b"]

    listed = await run_cli("--url", url, "cases", "list", home=tmp_path)
    assert listed.code == 0, listed
    assert listed.stdout.splitlines()[0].split() == ["GUID", "STATE", "CREATED", "ACS", "NAME"]
    assert case["guid"] in listed.stdout
    assert "intrusion" in listed.stdout

    updated = await run_cli(
        "--url", url, "--json", "cases", "update", case["guid"], "--close", home=tmp_path
    )
    assert updated.code == 0, updated
    assert msgspec.json.decode(updated.stdout)["closed"] is not None
    shown = await run_cli("--url", url, "cases", "get", case["guid"], home=tmp_path)
    assert shown.code == 0
    assert "intrusion" in shown.stdout
    deleted = await run_cli("--url", url, "cases", "delete", case["guid"], home=tmp_path)
    assert deleted.code == 0
    assert_clean_error(
        await run_cli("--url", url, "cases", "get", case["guid"], home=tmp_path),
        1,
        "server answered 404: case not found",
    )

    out = await run_cli("--url", url, "logout", home=tmp_path)
    assert out.code == 0, out
    assert not saved.exists()
    assert protocol_server.state.sessions == set()
    assert_clean_error(
        await run_cli("--url", url, "cases", "list", home=tmp_path), 4, "not logged in"
    )


async def test_wrong_password(
    protocol_server: RunningServer, run_cli: RunCli, tmp_path: Path
) -> None:
    result = await run_cli(
        "--url", protocol_server.url, "login", "-u", "admin", "--password-stdin",
        home=tmp_path, stdin="wrong\n",
    )  # fmt: skip
    assert_clean_error(result, 4, "login refused")


async def test_server_down_and_wrong_url(run_cli: RunCli, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    assert_clean_error(await run_cli("--url", down, "info", home=tmp_path), 3, "cannot connect")
    assert_clean_error(
        await run_cli("--url", down, "events", "6f1b8a52-1f3b-4a6e-9a51-0d6f0a3c7e11",
                      home=tmp_path),
        3,
        "cannot connect",
    )  # fmt: skip
    assert_clean_error(await run_cli("--url", "not a url", "info", home=tmp_path), 2, "api_url")
    assert_clean_error(await run_cli("info", home=tmp_path), 2, "no service URL")
    assert_clean_error(
        await run_cli("--url", down, "cases", "frobnicate", home=tmp_path), 2, "invalid choice"
    )


async def test_wrong_api_path_is_an_api_error(
    protocol_server: RunningServer, run_cli: RunCli, tmp_path: Path
) -> None:
    # A URL that answers, but not a Fusion service there: clear error, exit 1.
    result = await run_cli("--url", protocol_server.url + "/not-here", "info", home=tmp_path)
    assert_clean_error(result, 1, "404")


async def test_download_with_progress(
    protocol_server: RunningServer, run_cli: RunCli, tmp_path: Path
) -> None:
    protocol_server.state.download_body = os.urandom(2 * 1024 * 1024)
    output = tmp_path / "out"
    output.mkdir()
    key = f"{protocol_server.download_guid}/{protocol_server.download_token}"
    result = await run_cli(
        "--url", protocol_server.url, "download", key, "-o", str(output), home=tmp_path
    )
    assert result.code == 0, result
    written = output / "bashrc"
    assert written.read_bytes() == protocol_server.state.download_body
    # stderr is not a terminal here: no progress bar (tests/client/test_cli_screen.py
    # shows it on one); the path written goes to stdout, for scripts.
    assert result.stderr == ""
    assert result.stdout == f"{written}\n"


async def test_download_into_missing_directory_is_a_file_error(
    protocol_server: RunningServer, run_cli: RunCli, tmp_path: Path
) -> None:
    protocol_server.state.download_body = b"data"
    key = f"{protocol_server.download_guid}/{protocol_server.download_token}"
    result = await run_cli(
        "--url", protocol_server.url, "download", key, "-o", str(tmp_path / "no" / "such"),
        home=tmp_path,
    )  # fmt: skip
    assert_clean_error(result, 5, "No such file or directory")


async def test_events_until_interrupted(protocol_server: RunningServer, tmp_path: Path) -> None:
    from fusion.concept import Case

    case = Case(name="watched")
    protocol_server.state.cases[str(case.guid)] = case.to_dict()
    protocol_server.state.events = [
        {"source": "test", "category": f"c{n}", "case": case.to_dict(), "ext": {"n": n}}
        for n in range(3)
    ]
    environment = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        *_command(),
        "--url", protocol_server.url, "--api-key", protocol_server.api_key,
        "--json", "events", str(case.guid),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[Any] = []
    async with asyncio.timeout(20):
        while len(lines) < 3:
            lines.append(msgspec.json.decode(await process.stdout.readline()))
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 130
    assert "Traceback" not in err.decode()
    assert [line["category"] for line in lines] == ["c0", "c1", "c2"]
    assert lines[0]["case"]["guid"] == str(case.guid)
