"""The example service of examples/: built in-process and run as its own process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from fusion_testing.fixtures_cli import MainRunner
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    ServerFactory,
    ServerProcess,
    call,
    login,
    server_config_dict,
    write_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "timeline_service.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("timeline_service", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # msgspec resolves the Structs' annotations through sys.modules.
    sys.modules["timeline_service"] = module
    spec.loader.exec_module(module)
    return module


async def test_timeline_route_uses_storage_and_authorization(
    tmp_path: Path,
    example: ModuleType,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    (tmp_path / "constant.yml").write_text("banner: timelines\nmax_events: 50\n")
    config_file = write_config(tmp_path / "timeline.yml", server_config_dict(tmp_path))
    server = await fusion_server(example.build_server(str(config_file)))
    alice = http_sessions(server.url)
    await login(alice, "alice")
    status, envelope = await call(
        alice, "POST", "/api/case", json={"name": "t", "priority": "high", "acs": ["analysts"]}
    )
    assert status == 200
    assert envelope["data"]["priority"] == "high"
    case_guid = envelope["data"]["guid"]
    await call(alice, "PUT", f"/api/case/{case_guid}", json={"closed": "2026-11-28T05:00:00Z"})

    status, envelope = await call(alice, "GET", f"/api/timeline/{case_guid}")
    assert status == 200
    data = envelope["data"]
    assert data["priority"] == "high"
    assert data["case"]["guid"] == case_guid
    assert [event["event"] for event in data["events"]] == ["created", "updated", "closed"]

    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, envelope = await call(robot, "GET", f"/api/timeline/{case_guid}")
    assert (status, envelope["message"]) == (403, "access to this case denied")
    anonymous = http_sessions(server.url)
    assert (await call(anonymous, "GET", f"/api/timeline/{case_guid}"))[0] == 401
    status, _ = await call(alice, "GET", "/api/timeline/00000000-0000-4000-8000-000000000000")
    assert status == 404
    status, envelope = await call(alice, "GET", "/api/constant")
    assert envelope["data"]["max_events"] == 50


async def test_example_runs_as_its_own_process(
    tmp_path: Path, http_sessions: HTTPSessionFactory
) -> None:
    config_file = write_config(tmp_path / "timeline.yml", server_config_dict(tmp_path))
    with ServerProcess(
        ["--config", str(config_file)], cwd=tmp_path, command=[sys.executable, str(EXAMPLE)]
    ) as process:
        robot = http_sessions(process.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
        status, envelope = await call(robot, "POST", "/api/case", json={"name": "p"})
        assert (status, envelope["data"]["priority"]) == (200, "low")
        status, envelope = await call(robot, "GET", f"/api/timeline/{envelope['data']['guid']}")
        assert (status, [event["event"] for event in envelope["data"]["events"]]) == (
            200,
            ["created"],
        )
    assert process.stop() == 0


def test_the_examples_config_files_are_valid(
    run_main: MainRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files the examples' docstrings name exist and pass check-config."""
    from fusion.server.cli import main

    examples = EXAMPLE.parent
    monkeypatch.chdir(examples)  # the constant files are named relative to it
    timeline = run_main(main, "check-config", "timeline.yml")
    assert timeline.code == 0, timeline.stderr
    assert timeline.stdout.startswith("timeline.yml: ok")
    monkeypatch.syspath_prepend(str(examples))
    monkeypatch.delitem(sys.modules, "triage_service", raising=False)
    triage = run_main(main, "check-config", "--app", "triage_service:create_app", "triage.yml")
    assert triage.code == 0, triage.stderr
    assert "app triage_service:create_app builds" in triage.stdout
