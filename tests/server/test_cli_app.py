"""``fusion-server serve --app`` and ``check-config --app``: a service's own factory and
configuration class served by the shipped command.

The service is a module this file writes into the test's directory: real
``python -m fusion.server`` (and console script) processes serve it over loopback
sockets; ``check-config`` runs ``main(argv)`` in-process.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
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

WAIT = 30.0

SERVICE = """
from __future__ import annotations

import functools

import msgspec
from aiohttp import web

from fusion.helper.http_envelope import envelope_middleware
from fusion.helper.http_request import read_json
from fusion.server import FusionServer, FusionServerConfig
from fusion.server.appkeys import CONFIG


class TriageSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    workers: int = 2
    greeting: str = "hello"


class TriageConfig(FusionServerConfig, kw_only=True, forbid_unknown_fields=True):
    triage: TriageSection = msgspec.field(default_factory=TriageSection)


async def hello(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    assert isinstance(config, TriageConfig)
    data = {"greeting": config.triage.greeting, "workers": config.triage.workers}
    return web.json_response({"status": 200, "data": data, "count": len(data)})


def create(config: TriageConfig) -> FusionServer:
    server = FusionServer(config)
    server.add_routes([web.get("/api/triage/hello", hello)])
    return server


def bare(config: TriageConfig) -> web.Application:
    async def greet(request: web.Request) -> web.Response:
        return web.json_response({"status": 200, "data": config.triage.greeting})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"status": 200, "data": await read_json(request, 1024)})

    app = web.Application(middlewares=[envelope_middleware()])
    app.router.add_get("/greet", greet)
    app.router.add_post("/echo", echo)
    return app


def untyped(config):
    return web.Application()


def wrong_annotation(config: dict) -> web.Application:
    return web.Application()


def unresolvable(config: MissingConfig) -> web.Application:
    return web.Application()


def raising(config: TriageConfig) -> FusionServer:
    raise RuntimeError("no analyzers configured")


def returns_dict(config: TriageConfig) -> dict:
    return {"app": 1}


async def async_factory(config: TriageConfig) -> web.Application:
    return web.Application()


def no_param() -> web.Application:
    return web.Application()


def double_route(config: TriageConfig) -> FusionServer:
    server = FusionServer(config)
    server.add_routes([web.get("/api/triage/hello", hello), web.get("/api/triage/hello", hello)])
    return server


class TriageServer(FusionServer):
    def __init__(self, config: TriageConfig) -> None:
        super().__init__(config)
        self.add_routes([web.get("/api/triage/hello", hello)])


class Factory:
    def __call__(self, config: TriageConfig) -> FusionServer:
        return create(config)


instance_factory = Factory()


def _with_prefix(prefix: str, config: TriageConfig) -> FusionServer:
    return create(config)


partial_factory = functools.partial(_with_prefix, "triage")

NOT_CALLABLE = "triage"
"""

# --app, exit code, the one error line after "fusion-server: error: ".
BAD_APPS = [
    ("triage_service", 2, "--app 'triage_service': expected package.module:factory"),
    ("triage_service:", 2, "--app 'triage_service:': expected package.module:factory"),
    (
        "missing_module:create",
        2,
        "--app missing_module:create: cannot import missing_module:"
        " ModuleNotFoundError: No module named 'missing_module'",
    ),
    (
        "broken_service:create",
        2,
        "--app broken_service:create: cannot import broken_service:"
        " ZeroDivisionError: division by zero",
    ),
    (
        "triage_service:craete",
        2,
        "--app triage_service:craete: triage_service has no attribute 'craete'"
        " (did you mean 'create'?)",
    ),
    (
        "triage_service:NOT_CALLABLE",
        2,
        "--app triage_service:NOT_CALLABLE: NOT_CALLABLE is a str, not a callable",
    ),
    (
        "triage_service:no_param",
        2,
        "--app triage_service:no_param: the factory must take the configuration"
        " as its one argument (its signature is () -> 'web.Application')",
    ),
    (
        "triage_service:wrong_annotation",
        2,
        "--app triage_service:wrong_annotation: the configuration parameter 'config'"
        " is annotated dict, not a FusionServerConfig subclass",
    ),
    (
        "triage_service:unresolvable",
        2,
        "--app triage_service:unresolvable: cannot resolve the factory's annotations:"
        " NameError: name 'MissingConfig' is not defined",
    ),
    (
        "triage_service:raising",
        1,
        "--app triage_service:raising: the factory raised RuntimeError: no analyzers configured",
    ),
    (
        "triage_service:returns_dict",
        1,
        "--app triage_service:returns_dict: the factory returned a dict,"
        " not a FusionServer or an aiohttp web.Application",
    ),
    (
        "triage_service:async_factory",
        1,
        "--app triage_service:async_factory: the factory returned a coroutine"
        " (an async def factory? make it a plain function),"
        " not a FusionServer or an aiohttp web.Application",
    ),
]


def _write_service(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "triage_service.py").write_text(SERVICE)
    (directory / "broken_service.py").write_text("VALUE = 1 / 0\n")
    return directory


@pytest.fixture
def service_dir(tmp_path: Path) -> Iterator[Path]:
    """The service modules in ``tmp_path/service``, forgotten by this process afterwards."""
    directory = _write_service(tmp_path / "service")
    importlib.invalidate_caches()
    try:
        yield directory
    finally:
        for name in ("triage_service", "broken_service"):
            sys.modules.pop(name, None)


@pytest.fixture
def importable(service_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory is the service's, and not on sys.path (as for the console script)."""
    monkeypatch.chdir(service_dir)
    monkeypatch.setattr(
        sys, "path", [path for path in sys.path if path not in ("", ".", str(service_dir))]
    )
    return service_dir


def _triage_config(tmp_path: Path, **overrides: object) -> Path:
    config = server_config_dict(tmp_path / "data", **overrides)
    return write_config(tmp_path / "triage.yml", config)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("fusion-server: error: ")]


def _stop(process: ServerProcess) -> str:
    assert process.stop() == 0, process.output.decode(errors="replace")
    output = process.output.decode()
    assert "Traceback" not in output
    return output


async def test_serve_app_serves_its_route_and_the_framework_routes(
    tmp_path: Path, service_dir: Path, http_sessions: HTTPSessionFactory
) -> None:
    config = _triage_config(tmp_path, triage={"greeting": "bonjour", "workers": 5})
    # From elsewhere than the service's directory: found through PYTHONPATH.
    process = ServerProcess(
        ["--app", "triage_service:create", "--config", str(config)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(service_dir)},
    ).start()
    try:
        session = http_sessions(process.url)
        status, envelope = await call(session, "GET", "/api/triage/hello")
        assert (status, envelope["data"]) == (200, {"greeting": "bonjour", "workers": 5})
        status, envelope = await call(session, "GET", "/api/info")
        assert (status, envelope["data"]) == (200, {"api": "fusion-test", "version": "1.2.3"})
        assert (await call(session, "GET", "/api/cases"))[0] == 401
        assert (await login(session, "alice"))[0] == 200
        assert (await call(session, "POST", "/api/case", json={"name": "triage"}))[0] == 200
    finally:
        output = _stop(process)
    start = next(line for line in output.splitlines() if " on http://127.0.0.1:" in line)
    assert f"on http://127.0.0.1:{process.port} (app triage_service:create; store memory://" in (
        start
    )
    assert "APIs: auth, info, constant, case, health; service sections: triage)" in start
    assert "fusion-server stopped (app triage_service:create)" in output


def _greeted(port: int) -> socket.socket | None:
    """A connection whose ``GET /greet`` was answered (kept open), or None when refused."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        sock.sendall(b"GET /greet HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        answer = b""
    if answer.startswith(b"HTTP/1.1 200") and b'"data": "salut"' in answer:
        return sock
    sock.close()
    assert answer == b"", answer
    return None


def _greeted_once_free(port: int) -> socket.socket:
    """A served connection, once the connections before it (the readiness probe) are gone."""
    deadline = time.monotonic() + WAIT
    while (sock := _greeted(port)) is None:
        assert time.monotonic() < deadline, "no connection served"
        time.sleep(0.01)
    return sock


def test_serve_app_of_a_bare_application_has_the_connection_caps(
    tmp_path: Path, service_dir: Path
) -> None:
    config = _triage_config(
        tmp_path, server={"max_connections_per_address": 1}, triage={"greeting": "salut"}
    )
    process = ServerProcess(
        ["--app", "triage_service:bare", "--config", str(config)], cwd=service_dir
    ).start()
    try:
        with _greeted_once_free(process.port):
            # The first is open (keep-alive) and counted: a second is closed at once.
            assert _greeted(process.port) is None
        # Once the first is gone, a connection is served again.
        _greeted_once_free(process.port).close()
    finally:
        # A refused connection left no traceback behind (Python 3.11: aiohttp's
        # handler task used to start after the refusal and fail an assertion).
        output = _stop(process)
    assert "refusing connections: 1 connections open from 127.0.0.1" in output
    assert "fusion-server stopped (app triage_service:bare)" in output


def test_serve_app_of_a_bare_application_has_the_timeouts(
    tmp_path: Path, service_dir: Path
) -> None:
    config = _triage_config(
        tmp_path,
        server={"keepalive_timeout": 1, "body_timeout": 1},
        triage={"greeting": "salut"},
    )
    process = ServerProcess(
        ["--app", "triage_service:bare", "--config", str(config)], cwd=service_dir
    ).start()
    try:
        with _greeted_once_free(process.port) as idle:
            # Closed by the server after server.keepalive_timeout (aiohttp's own
            # default, 75 s, would outlast the socket's WAIT-second timeout).
            assert idle.recv(1) == b""
        with socket.create_connection(("127.0.0.1", process.port), timeout=20) as slow:
            slow.sendall(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"data": '
            )
            # A 408 after server.body_timeout (the default, 30 s, outlasts this socket's 20 s).
            answer = slow.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"request body not received within 1 s" in answer
    finally:
        _stop(process)


async def test_console_script_finds_the_app_in_the_current_directory_on_embedded_defaults(
    tmp_path: Path, service_dir: Path, http_sessions: HTTPSessionFactory
) -> None:
    script = Path(sys.executable).with_name("fusion-server")
    assert script.exists(), f"no console script beside {sys.executable}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["FUSION_ADMIN_PASSWORD"] = "s3cret-admin"
    process = ServerProcess(
        ["--app", "triage_service:create", "--data-dir", str(tmp_path / "data")],
        cwd=service_dir,
        command=[str(script), "serve"],
    )
    process.env = env
    process.start()
    try:
        session = http_sessions(process.url)
        status, envelope = await call(session, "GET", "/api/triage/hello")
        # The service's own section takes its defaults beside the embedded ones.
        assert (status, envelope["data"]) == (200, {"greeting": "hello", "workers": 2})
        assert (await login(session, "admin", "s3cret-admin"))[0] == 200
    finally:
        output = _stop(process)
    assert "service sections: triage" in output
    assert (tmp_path / "data" / "fusion.sqlite").exists()


def test_plain_serve_logs_the_shutdown_line(tmp_path: Path) -> None:
    process = ServerProcess(
        ["--data-dir", str(tmp_path)], cwd=tmp_path, env={"FUSION_ADMIN_PASSWORD": "x" * 12}
    ).start()
    output = _stop(process)
    lines = output.splitlines()
    started = next(index for index, line in enumerate(lines) if " on http://" in line)
    stopped = [index for index, line in enumerate(lines) if "fusion-server stopped" in line]
    [stopped_at] = stopped
    assert stopped_at > started
    assert lines[stopped_at].endswith("fusion-server stopped")


def test_serve_app_on_a_busy_port_is_a_one_line_error(tmp_path: Path, service_dir: Path) -> None:
    config = _triage_config(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(
            "serve", "--app", "triage_service:create", "--config", str(config),
            "--port", str(port), cwd=service_dir,
        )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = _error_lines(result.stderr)
    assert line.startswith(f"fusion-server: error: cannot serve on 127.0.0.1:{port}: ")
    assert "fusion-server stopped" not in result.stderr


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusion.server", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
        env={**os.environ, "FUSION_ADMIN_PASSWORD": "x" * 12},
    )


@pytest.mark.parametrize(("app", "code", "message"), BAD_APPS, ids=[app for app, *_ in BAD_APPS])
def test_serve_with_a_bad_app_is_a_one_line_error(
    tmp_path: Path, service_dir: Path, app: str, code: int, message: str
) -> None:
    result = _run(
        "serve", "--app", app, "--data-dir", str(tmp_path / "data"), "--port", "0",
        cwd=service_dir,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert _error_lines(result.stderr) == [f"fusion-server: error: {message}"]


@pytest.mark.parametrize(("app", "code", "message"), BAD_APPS, ids=[app for app, *_ in BAD_APPS])
def test_check_config_with_a_bad_app_is_a_one_line_error(
    tmp_path: Path, importable: Path, run_main: MainRunner, app: str, code: int, message: str
) -> None:
    config = _triage_config(tmp_path)
    result = run_main(main, "check-config", "--app", app, str(config))
    assert (result.code, result.stdout) == (code, "")
    assert result.stderr == f"fusion-server: error: {message}\n"


def test_check_config_with_app_validates_the_service_sections(
    tmp_path: Path, importable: Path, run_main: MainRunner
) -> None:
    config = _triage_config(tmp_path, triage={"workers": 4})
    # Found in the current directory although it is not on sys.path (cf. python -m).
    result = run_main(main, "check-config", "--app", "triage_service:create", str(config))
    assert result.code == 0, result.stderr
    assert result.stdout == (
        f"{config}: ok: listen 127.0.0.1:0; store memory://; data {tmp_path / 'data'};"
        " auth backend basic, 1 API key(s), federation key yes;"
        " APIs: auth, info, constant, case, health; service sections: triage;"
        " app triage_service:create builds\n"
    )
    # The same file without --app: the framework does not know the section.
    result = run_main(main, "check-config", str(config))
    assert result.code == 2
    assert result.stderr == (
        f"fusion-server: error: {config}: unknown key 'triage' (did you mean 'storage'?)\n"
    )


@pytest.mark.parametrize(
    "factory", ["create", "TriageServer", "instance_factory", "partial_factory"]
)
def test_check_config_finds_the_configuration_class_of_any_callable(
    tmp_path: Path, importable: Path, run_main: MainRunner, factory: str
) -> None:
    """A function, a FusionServer subclass, a callable object, a partial: each annotated."""
    config = _triage_config(tmp_path, triage={"workers": 4})
    result = run_main(main, "check-config", "--app", f"triage_service:{factory}", str(config))
    assert result.code == 0, result.stderr
    assert result.stdout.endswith(
        f"; service sections: triage; app triage_service:{factory} builds\n"
    )


@pytest.mark.parametrize(
    ("section", "error"),
    [
        ({"triage": {"workrs": 3}}, "unknown key 'triage.workrs' (did you mean 'workers'?)"),
        ({"triag": {"workers": 3}}, "unknown key 'triag' (did you mean 'triage'?)"),
        (
            {"triage": {"workers": "many"}},
            "triage.workers: Expected `int`, got `str` (value 'many')",
        ),
    ],
)
def test_check_config_with_app_refuses_bad_service_sections(
    tmp_path: Path,
    importable: Path,
    run_main: MainRunner,
    section: dict[str, object],
    error: str,
) -> None:
    config = _triage_config(tmp_path, **section)
    result = run_main(main, "check-config", "--app", "triage_service:create", str(config))
    assert (result.code, result.stdout) == (2, "")
    assert result.stderr == f"fusion-server: error: {config}: {error}\n"


def test_check_config_with_app_builds_the_application(
    tmp_path: Path, importable: Path, run_main: MainRunner
) -> None:
    config = _triage_config(tmp_path)
    result = run_main(main, "check-config", "--app", "triage_service:double_route", str(config))
    assert (result.code, result.stdout) == (1, "")
    assert result.stderr == (
        "fusion-server: error: --app triage_service:double_route: cannot build the application:"
        " RuntimeError: Added route will never be executed, method HEAD is already registered\n"
    )
    # Built, never started: nothing opened the database.
    assert not (tmp_path / "data" / "fusion.sqlite").exists()
    result = run_main(main, "check-config", "--app", "triage_service:bare", str(config))
    assert result.code == 0, result.stderr
    assert result.stdout.endswith("; app triage_service:bare builds\n")
    # Unannotated: decoded with the framework's own class.
    result = run_main(main, "check-config", "--app", "triage_service:untyped", str(config))
    assert result.code == 0, result.stderr
    assert "service sections" not in result.stdout
    result = run_main(main, "check-config", "--app", "fusion.server:FusionServer", str(config))
    assert result.code == 0, result.stderr
    assert result.stdout.endswith("; app fusion.server:FusionServer builds\n")


def test_help_says_where_app_modules_are_found(run_main: MainRunner) -> None:
    result = run_main(main, "serve", "--help")
    assert result.code == 0
    text = " ".join(result.stdout.split())
    assert "--app MODULE:FACTORY" in text
    assert "imported from the current directory (as python -m does) or PYTHONPATH" in text
    result = run_main(main, "check-config", "--help")
    assert "build (never start)" in " ".join(result.stdout.split())
