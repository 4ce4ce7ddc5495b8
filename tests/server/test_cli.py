"""The fusion-server command: ``main(argv)`` in-process, and as a real process where
the entry point itself is tested (``serve``, signals, ``python -m``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fusion_testing.fixtures_cli import MainRunner
from fusion_testing.fixtures_server import (
    HTTPSessionFactory,
    ServerProcess,
    call,
    login,
    server_config_dict,
    write_config,
)

from fusion.server.cli import main

ServerProcessFactory = Callable[..., ServerProcess]


def _run(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusion.server", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


async def test_serve_on_embedded_defaults_with_a_full_session(
    tmp_path: Path, server_process: ServerProcessFactory, http_sessions: HTTPSessionFactory
) -> None:
    process = server_process(
        ["--data-dir", str(tmp_path / "data")], env={"FUSION_ADMIN_PASSWORD": "s3cret-admin"}
    )
    session = http_sessions(process.url)
    status, envelope = await call(session, "GET", "/api/info")
    assert (status, envelope["data"]["api"]) == (200, "fusion")
    assert (await call(session, "GET", "/api/cases"))[0] == 401
    status, envelope = await login(session, "admin", "wrong")
    assert status == 400
    status, envelope = await login(session, "admin", "s3cret-admin")
    assert (status, envelope["data"]) == (200, {"username": "admin", "groups": ["admins"]})
    status, envelope = await call(session, "POST", "/api/case", json={"name": "first"})
    assert status == 200
    case_guid = envelope["data"]["guid"]
    status, envelope = await call(session, "GET", "/api/cases")
    assert [case["guid"] for case in envelope["data"]] == [case_guid]
    status, envelope = await call(session, "GET", f"/api/case/{case_guid}")
    assert envelope["data"]["name"] == "first"
    status, envelope = await call(
        session, "PUT", f"/api/case/{case_guid}", json={"description": "updated"}
    )
    assert (status, envelope["data"]["description"]) == (200, "updated")
    assert (await call(session, "DELETE", f"/api/case/{case_guid}"))[0] == 200
    assert (await call(session, "GET", f"/api/case/{case_guid}"))[0] == 404
    assert (await call(session, "GET", "/api/constant"))[0] == 503
    assert process.stop() == 0
    assert (tmp_path / "data" / "fusion.sqlite").exists()


async def test_generated_admin_password_is_printed_once_and_kept_hashed(
    tmp_path: Path, http_sessions: HTTPSessionFactory
) -> None:
    env = {key: value for key, value in os.environ.items() if key != "FUSION_ADMIN_PASSWORD"}
    data_dir = tmp_path / "data"
    first = ServerProcess(["--data-dir", str(data_dir)], cwd=tmp_path, env=env)
    first.env.pop("FUSION_ADMIN_PASSWORD", None)
    with first:
        pass
    output = first.output.decode()
    marker = "generated the password of user 'admin': "
    assert marker in output
    password = output.split(marker, 1)[1].split()[0]
    hash_file = data_dir / "admin.hash"
    assert hash_file.stat().st_mode & 0o777 == 0o600
    assert password not in hash_file.read_text()
    PasswordHasher().verify(hash_file.read_text().strip(), password)
    second = ServerProcess(["--data-dir", str(data_dir)], cwd=tmp_path)
    second.env.pop("FUSION_ADMIN_PASSWORD", None)
    with second:
        session = http_sessions(second.url)
        assert (await login(session, "admin", password))[0] == 200
    assert marker not in second.output.decode()


async def test_serve_with_a_config_file_and_check_config(
    tmp_path: Path,
    server_process: ServerProcessFactory,
    http_sessions: HTTPSessionFactory,
    run_main: MainRunner,
) -> None:
    config_file = write_config(tmp_path / "fusion.yml", server_config_dict(tmp_path / "data"))
    result = await run_main.in_thread(main, "check-config", str(config_file))
    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"{config_file}: ok: ")
    assert "auth backend basic, 1 API key(s), federation key yes" in result.stdout
    process = server_process(["--config", str(config_file)])
    session = http_sessions(process.url)
    status, envelope = await call(session, "GET", "/api/info")
    assert (status, envelope["data"]) == (200, {"api": "fusion-test", "version": "1.2.3"})
    assert (await login(session, "alice"))[0] == 200


def test_check_config_names_the_bad_key(tmp_path: Path, run_main: MainRunner) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("server:\n  port: http\n")
    result = run_main(main, "check-config", str(bad))
    assert result.code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"fusion-server: error: {bad}: server.port: Expected `int`, got `str` (value 'http')\n"
    )
    result = run_main(main, "check-config", str(tmp_path / "missing.yml"))
    assert result.code == 2
    assert "Traceback" not in result.stderr
    assert "No such file or directory" in result.stderr


def test_serve_with_a_bad_config_exits_2_without_traceback(
    tmp_path: Path, run_main: MainRunner
) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("auth:\n  backend: {type: kerberos}\n")
    result = run_main(main, "serve", "--config", str(bad))
    assert result.code == 2
    assert "Traceback" not in result.stderr
    assert "auth.backend.type: unknown backend type 'kerberos'" in result.stderr


def test_serve_on_a_busy_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(
            "serve",
            "--data-dir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"fusion-server: error: cannot serve on 127.0.0.1:{port}" in result.stderr


def test_hash_password_reads_stdin(run_main: MainRunner) -> None:
    result = run_main(main, "hash-password", stdin="correct horse\n")
    assert result.code == 0
    encoded = result.stdout.strip()
    assert encoded.startswith("$argon2id$")
    assert PasswordHasher().verify(encoded, "correct horse")
    result = run_main(main, "hash-password", stdin="\n")
    assert (result.code, result.stderr) == (1, "fusion-server: error: empty password\n")


def test_usage_errors_exit_2(run_main: MainRunner) -> None:
    result = run_main(main)
    assert result.code == 2
    assert "usage: fusion-server" in result.stderr
    result = run_main(main, "--version")
    assert result.code == 0
    assert result.stdout.startswith("fusion-server ")


def test_python_dash_m_entry_point() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("fusion-server ")


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_signals_stop_the_server_cleanly(tmp_path: Path, signal_name: str) -> None:
    process = ServerProcess(
        ["--data-dir", str(tmp_path)], cwd=tmp_path, env={"FUSION_ADMIN_PASSWORD": "x" * 12}
    ).start()
    assert process.process is not None
    process.process.send_signal(getattr(signal, signal_name))
    assert process.process.wait(timeout=15) == 0
    process.stop()
    assert b"Traceback" not in process.output


def test_storage_that_cannot_open_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "fusion.sqlite").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusion.server",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "FUSION_ADMIN_PASSWORD": "x" * 12},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "fusion-server: error: cannot start: OperationalError" in result.stderr
