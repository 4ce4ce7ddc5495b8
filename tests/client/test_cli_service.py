"""The ``fusion-client`` command driving a real service of its own: the tutorial's triage
service (its TriageCase with ``severity``, its upload, list and download routes), two
``fusion-server serve --app triage_service:create_app`` replicas on one real Redis.

The command runs in-process through ``main(argv)`` (``events``, which runs until
interrupted, as a process).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fusion_testing.fixtures_cli import CliResult, MainRunner
from fusion_testing.fixtures_triage_cli import (
    EXAMPLES,
    TRIAGE_CASE_TYPE,
    TRIAGE_PASSWORD,
    TRIAGE_ROBOT_KEY,
    TriageReplicas,
    cli_argv,
    cli_env,
)
from fusion_testing.services import free_port

from fusion.client.cli import build_parser, main
from fusion.client.cli_completion import command_words, completion_script

pytestmark = pytest.mark.redis

RunCli = Callable[..., Awaitable[CliResult]]


@pytest.fixture
def run_cli(run_main: MainRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunCli:
    """``await run_cli(*argv, stdin=...)``: ``main(argv)`` in-process, from examples/."""
    monkeypatch.chdir(EXAMPLES)  # --case-type triage_service:TriageCase imports from here

    async def run(*args: str, stdin: str | None = None) -> CliResult:
        env = {"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}
        return await run_main.in_thread(main, *args, stdin=stdin, env=env)

    return run


def _one_error_line(result: CliResult, code: int, *fragments: str) -> str:
    assert result.code == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fusion-client: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _json(result: CliResult) -> Any:
    assert result.code == 0, result
    return msgspec.json.decode(result.stdout)


async def test_profile_session_follows_the_service_across_replicas(
    triage_replicas: TriageReplicas, run_cli: RunCli, tmp_path: Path
) -> None:
    one, two = triage_replicas.urls
    added = await run_cli(
        "profile", "add", "triage", "--url", one, "--url", two, "--case-type", TRIAGE_CASE_TYPE
    )
    assert added.code == 0, added
    config = tmp_path / "fusion-client" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    listed = await run_cli("profile", "list")
    assert "* triage" in listed.stdout
    assert TRIAGE_CASE_TYPE in listed.stdout

    # The only profile is the default one: no option needed. Login lands on the first URL.
    login = await run_cli(
        "login", "-u", "analyst", "--password-stdin", stdin=TRIAGE_PASSWORD + "\n"
    )
    assert (login.code, login.stdout) == (0, "logged in as analyst (analysts)\n"), login
    session = tmp_path / "fusion-client" / "sessions" / "profile-triage.json"
    assert stat.S_IMODE(session.stat().st_mode) == 0o600

    # The other replica of the profile is logged in too: the session is the service's.
    whoami = await run_cli("--profile", "triage", "--url", two, "whoami")
    assert (whoami.code, whoami.stdout) == (0, "analyst (analysts)\n"), whoami
    created = _json(await run_cli("--url", two, "--json", "-p", "triage", "cases", "create",
                                  "--name", "via-two", "--set", "severity=2"))  # fmt: skip
    assert created["severity"] == 2
    # --url alone is today's behaviour: a session per URL, none for this one yet.
    _one_error_line(await run_cli("--url", two, "whoami"), 4, "not logged in", "login")
    # A URL that is not the profile's gets no session, and a clear error.
    _one_error_line(
        await run_cli("-p", "triage", "--url", "http://127.0.0.1:9", "whoami"),
        2,
        "not a URL of profile triage",
    )
    _one_error_line(await run_cli("-p", "nope", "whoami"), 2, "no profile 'nope'", "profile add")

    # Logging out through the second replica ends the session everywhere.
    logout = await run_cli("-p", "triage", "--url", two, "logout")
    assert logout.code == 0, logout
    assert not session.exists()
    _one_error_line(await run_cli("-p", "triage", "whoami"), 4, "not logged in")
    removed = await run_cli("profile", "remove", "triage")
    assert removed.code == 0, removed
    _one_error_line(await run_cli("whoami"), 2, "no service URL")
    down = f"http://127.0.0.1:{free_port()}"
    _one_error_line(await run_cli("--url", down, "info"), 3, "cannot connect", "check --url")


async def test_case_type_keeps_severity_and_set_parses_json(
    triage_replicas: TriageReplicas, run_cli: RunCli
) -> None:
    base = ("--url", triage_replicas.one.url, "--api-key", TRIAGE_ROBOT_KEY)
    created = _json(await run_cli(*base, "--json", "cases", "create", "--name", "host-7",
                                  "--set", "severity=3", "--set", "tsid=T-1"))  # fmt: skip
    guid = created["guid"]
    assert (created["severity"], created["tsid"]) == (3, "T-1")

    # Without --case-type the service's field is kept and printed, never dropped.
    shown = await run_cli(*base, "cases", "get", guid)
    assert shown.code == 0, shown
    assert [line.split() for line in shown.stdout.splitlines() if line.startswith("severity")] == [
        ["severity", "3"]
    ]
    # With it, cases decode into TriageCase (severity typed, in its place).
    typed = _json(await run_cli(*base, "--case-type", TRIAGE_CASE_TYPE, "--json", "cases", "get",
                                guid))  # fmt: skip
    assert typed["severity"] == 3
    listed = _json(await run_cli(*base, "--case-type", TRIAGE_CASE_TYPE, "--json", "cases",
                                 "list"))  # fmt: skip
    assert {case["guid"]: case["severity"] for case in listed}[guid] == 3

    # --set: JSON when it parses (a number, a list, null), text otherwise.
    updated = _json(await run_cli(*base, "--json", "cases", "update", guid,
                                  "--set", "severity=5", "--set", 'acs=["analysts"]',
                                  "--set", "description=not JSON: text"))  # fmt: skip
    assert (updated["severity"], updated["acs"], updated["description"]) == (
        5,
        ["analysts"],
        "not JSON: text",
    )
    # A wrong type for the service's field: the service's 400, one line.
    _one_error_line(
        await run_cli(*base, "cases", "update", guid, "--set", "severity=high"),
        1,
        "server answered 400",
        "severity",
    )
    _one_error_line(
        await run_cli(*base, "cases", "update", guid, "--set", "oops"), 2, "expected name=value"
    )
    _one_error_line(
        await run_cli(*base, "--case-type", "triage_service:Nope", "cases", "list"),
        2,
        "triage_service has no 'Nope'",
    )
    _one_error_line(
        await run_cli(*base, "--case-type", "triage_service:Triage", "cases", "list"),
        2,
        "not a subclass of fusion.concept.Case",
    )


async def test_case_guid_prefixes(triage_replicas: TriageReplicas, run_cli: RunCli) -> None:
    base = ("--url", triage_replicas.two.url, "--api-key", TRIAGE_ROBOT_KEY)
    guids = ["c11e0001-0000-4000-8000-000000000001", "c11e0002-0000-4000-8000-000000000002"]
    for number, guid in enumerate(guids):
        created = _json(await run_cli(*base, "--json", "cases", "create", "--name", f"p{number}",
                                      "--set", f"guid={guid}"))  # fmt: skip
        assert created["guid"] == guid

    # Unique: the case it names.
    shown = _json(await run_cli(*base, "--json", "cases", "get", "c11e0002"))
    assert shown["guid"] == guids[1]
    updated = _json(await run_cli(*base, "--json", "cases", "update", "C11E0001", "--name", "q"))
    assert (updated["guid"], updated["name"]) == (guids[0], "q")
    # Ambiguous: every match listed, nothing changed.
    line = _one_error_line(
        await run_cli(*base, "cases", "update", "c11e", "--name", "never"),
        2,
        "'c11e' matches 2 cases",
        "more characters",
    )
    assert guids[0] in line
    assert guids[1] in line
    assert _json(await run_cli(*base, "--json", "cases", "get", guids[1]))["name"] == "p1"
    # None, and too short.
    _one_error_line(
        await run_cli(*base, "cases", "delete", "c11e9"), 2, "no case of yours starts with 'c11e9'"
    )
    _one_error_line(await run_cli(*base, "cases", "get", "c11"), 2, "first 4 characters")
    deleted = await run_cli(*base, "cases", "delete", "c11e0001")
    assert (deleted.code, deleted.stdout) == (0, f"deleted {guids[0]}\n"), deleted


async def test_upload_call_and_download_of_a_service_route(
    triage_replicas: TriageReplicas, run_cli: RunCli, tmp_path: Path
) -> None:
    one, two = triage_replicas.urls
    login = await run_cli(
        "--url", one, "login", "-u", "analyst", "--password-stdin", stdin=TRIAGE_PASSWORD + "\n"
    )
    assert login.code == 0, login
    guid = _json(await run_cli("--url", one, "--json", "cases", "create", "--name", "up"))["guid"]
    sample = tmp_path / "evil.exe"
    sample.write_bytes(os.urandom(600_000) + b"MZ")
    sha256 = hashlib.sha256(sample.read_bytes()).hexdigest()

    # upload: streamed multipart, the form fields beside the file; the answer printed.
    uploaded = _json(await run_cli("--url", one, "upload", f"/api/triage/{guid}/samples",
                                   str(sample), "--field", 'tags=["usb", "host-7"]',
                                   "--field", "comment=from the key"))  # fmt: skip
    assert uploaded["sha256"] == sha256
    assert uploaded["fields"] == {"tags": ["usb", "host-7"], "comment": "from the key"}

    # call: the service's own routes, with query parameters, and a multipart --file.
    other = tmp_path / "other.bin"
    other.write_bytes(b"second sample")
    posted = _json(await run_cli("--url", one, "call", "POST", f"/api/triage/{guid}/samples",
                                 "--file", f"file=@{other}", "--field", "comment=two"))  # fmt: skip
    assert posted["fields"]["comment"] == "two"
    listed = _json(
        await run_cli("--url", one, "call", "get", f"/api/triage/{guid}/samples", "--param", "a=1")
    )
    assert sorted(item["sha256"] for item in listed) == sorted([sha256, posted["sha256"]])

    # A download whose key only the caller may ask for: the route gets the session,
    # the one-time key is then fetched, and the file lands whole.
    route = f"/api/triage/{guid}/samples/{sha256}/download"
    out = tmp_path / "out"
    out.mkdir()
    fetched = await run_cli("--url", one, "call", "GET", route, "--download", "-o", str(out))
    assert fetched.code == 0, fetched
    assert fetched.stdout == f"{out / 'evil.exe'}\n"
    assert fetched.stderr == ""  # not a terminal: no progress bar
    assert hashlib.sha256((out / "evil.exe").read_bytes()).hexdigest() == sha256
    # Without the caller's credentials the route refuses; the message says what to do.
    _one_error_line(
        await run_cli("--url", two, "call", "GET", route, "--download", "-o", str(out)),
        4,
        "not logged in: run 'fusion-client login' or pass --api-key",
    )
    # The robot's API key goes with the route (and the download).
    robot = await run_cli("--url", two, "--api-key", TRIAGE_ROBOT_KEY, "--json", "call", "GET",
                          route, "--download", "-o", str(out / "robot.exe"))  # fmt: skip
    assert _json(robot) == {"path": str(out / "robot.exe")}
    assert (out / "robot.exe").read_bytes() == sample.read_bytes()
    _one_error_line(
        await run_cli("--url", one, "call", "GET", f"/api/triage/{guid}/samples", "--download"),
        1,
        "did not answer a download key",
    )
    _one_error_line(
        await run_cli("--url", one, "call", "POST", "/api/case", "--json", "{not json"),
        2,
        "--json: not valid JSON",
    )

    # A closed case: the refusal names the command's own --reopen.
    closed = await run_cli("--url", one, "cases", "update", guid[:8], "--close")
    assert closed.code == 0, closed
    line = _one_error_line(
        await run_cli("--url", one, "upload", f"/api/triage/{guid}/samples", str(other)),
        4,
        f"case {guid} is closed",
        f"fusion-client cases update {guid[:8]} --reopen",
    )
    assert '"closed": null' not in line
    reopened = _json(await run_cli("--url", one, "--json", "cases", "update", guid[:8], "--reopen"))
    assert reopened["closed"] is None
    again = await run_cli("--url", one, "upload", f"/api/triage/{guid}/samples", str(other))
    assert again.code == 0, again

    # A wrong password: one sentence, "login refused" once.
    refused = _one_error_line(
        await run_cli("--url", two, "login", "-u", "analyst", "--password-stdin", stdin="wrong\n"),
        4,
        "login refused: check the username and password",
    )
    assert refused.count("login refused") == 1


async def _read_until(stream: asyncio.StreamReader, predicate: Callable[[str], bool]) -> str:
    async with asyncio.timeout(30):
        while True:
            line = (await stream.readline()).decode()
            assert line, "the command ended"
            if predicate(line):
                return line


@pytest.mark.parametrize("json_lines", [False, True], ids=["readable", "json"])
async def test_events_one_line_each(
    triage_replicas: TriageReplicas, run_cli: RunCli, tmp_path: Path, json_lines: bool
) -> None:
    base = ("--url", triage_replicas.one.url, "--api-key", TRIAGE_ROBOT_KEY)
    guid = _json(await run_cli(*base, "--json", "cases", "create", "--name", "watched"))["guid"]
    process = await asyncio.create_subprocess_exec(
        *cli_argv("--url", triage_replicas.two.url, "--api-key", TRIAGE_ROBOT_KEY,
                  "--case-type", TRIAGE_CASE_TYPE, *(["--json"] if json_lines else []),
                  "events", guid[:8]),
        cwd=EXAMPLES,
        env=cli_env(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        first = await _read_until(process.stdout, lambda line: "subscribers" in line)
        updated = await run_cli(*base, "cases", "update", guid, "--set", "severity=4")
        assert updated.code == 0, updated
        change = await _read_until(process.stdout, lambda line: "update_case" in line)
    finally:
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130, err
    assert b"Traceback" not in err
    if json_lines:
        event = msgspec.json.decode(change)
        assert (event["category"], event["case"]["severity"]) == ("update_case", 4)
        assert msgspec.json.decode(first)["ext"] == {"usernames": ["robot"]}
    else:
        assert "watching: robot" in first
        assert "'watched'" in first
        # One readable line: time, category, who, case name, what changed.
        fields = change.split()
        assert fields[0].count(":") == 2
        assert fields[1] == "update_case"
        assert "'watched'" in change
        assert "severity 0 → 4" in change


def test_completion_names_every_command() -> None:
    parser = build_parser()
    words = command_words(parser)
    assert words[()][0] == sorted(
        ["call", "cases", "completion", "download", "events", "info", "login", "logout",
         "profile", "upload", "whoami"]
    )  # fmt: skip
    for shell in ("bash", "zsh"):
        script = completion_script(shell, "fusion-client", parser)
        for path, (children, options) in words.items():
            assert f"{'/'.join(path)!r}) words=" in script or f"{'/'.join(path)}) words=" in script
            for word in [*children, *options]:
                assert word in script
        assert "complete -o default -F _fusion_client fusion-client" in script
    assert "--reopen" in completion_script("bash", "fusion-client", parser)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["cases", ""], {"list", "get", "create", "update", "delete"}),
        (["--url", "http://x", "cases", "update", "--re"], {"--reopen"}),
        (["completion", ""], {"bash", "zsh"}),
        ([""], {"cases", "login", "upload", "call", "--profile", "--case-type"}),
    ],
)
async def test_bash_completion_script_completes(
    words: list[str], expected: set[str], tmp_path: Path
) -> None:
    script = tmp_path / "completion.bash"
    script.write_text(completion_script("bash", "fusion-client", build_parser()))
    quoted = " ".join(f"'{word}'" for word in ["fusion-client", *words])
    probe = (
        f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words)};"
        ' _fusion_client; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    process = await asyncio.create_subprocess_exec(
        "bash", "--norc", "-c", probe, cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    offered = {line for line in out.decode().splitlines() if line}
    assert expected <= offered, offered
    if words[-1].startswith("--re"):
        assert offered == {"--reopen"}


def test_readme_profiles_file_is_read(run_main: MainRunner, tmp_path: Path) -> None:
    # The README's config.toml, written by hand, is what `profile list` reads.
    readme = Path(__file__).resolve().parents[2] / "packages" / "fusion-client" / "README.md"
    blocks = re.findall(r"```toml\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1
    config = tmp_path / "fusion-client" / "config.toml"
    config.parent.mkdir()
    config.write_text(blocks[0])
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    listed = run_main(main, "--json", "profile", "list", env=env)
    assert listed.code == 0, listed
    shown = msgspec.json.decode(listed.stdout)
    assert shown["default"] == "triage"
    assert shown["profiles"]["triage"]["case_type"] == "triage_cases:TriageCase"
    assert len(shown["profiles"]["triage"]["urls"]) == 2
    assert shown["profiles"]["hub"]["api_key"] == "..."
    # A mistake in the file: one line naming it.
    config.write_text(blocks[0].replace("urls =", "url ="))
    broken = run_main(main, "profile", "list", env=env)
    assert broken.code == 2
    assert "config.toml" in broken.stderr
    assert "url" in broken.stderr
