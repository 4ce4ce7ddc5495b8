"""``fusion-server import-data``: an older service's data directory into Fusion's storage.

The directory is written here in the older layout (``<dir>/<guid>/metadata.json``,
``<dir>/cache/identities.json``), with a service's Case subclass field; the
import runs in-process (``main``), runs again (nothing more imported), refuses
bad folders with their reason, and the imported cases are then served and
read over real sockets.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from fusion_testing.fixtures_cli import MainRunner
from fusion_testing.fixtures_server import (
    HTTPSessionFactory,
    ServerFactory,
    call,
    login,
    server_config_dict,
    write_config,
)

from fusion.concept import Case
from fusion.server import FusionServer, FusionServerConfig, load_config
from fusion.server.cli import main
from fusion.server.storage.sqlite import SQLiteStorage

SERVICE = """
from fusion.concept import Case
from fusion.server import FusionServer, FusionServerConfig


class IrisCase(Case, kw_only=True):
    iris_id: int | None = None


def create(config: FusionServerConfig) -> FusionServer:
    return FusionServer(config, case_type=IrisCase)
"""


class IrisCase(Case, kw_only=True):
    """The service's case as this test serves it (the same fields as SERVICE's)."""

    iris_id: int | None = None


def _older_case(**fields: Any) -> dict[str, Any]:
    """A case as the older framework's ``Case.to_dict`` wrote it, plus the service's field."""
    case = {
        "guid": str(uuid4()),
        "managed": False,
        "created": "2025-03-04T05:06:07+00:00",
        "updated": None,
        "closed": None,
        "tsid": None,
        "name": "case",
        "description": "",
        "acs": ["analysts"],
        "acs_ro": [],
        "webhooks": [],
        "iris_id": 7,
    }
    case.update(fields)
    return case


def _values(case: dict[str, Any]) -> IrisCase:
    return msgspec.convert(case, IrisCase)


def _write(directory: Path, name: str, content: bytes) -> None:
    folder = directory / name
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_bytes(content)


@pytest.fixture
def older(tmp_path: Path) -> tuple[Path, list[dict[str, Any]], dict[str, str]]:
    """The older storage directory: two good cases, and folders to refuse (name -> reason)."""
    directory = tmp_path / "older"
    good = [
        _older_case(
            name="ransomware",
            description="finance share",
            tsid="TS-1",
            managed=True,
            updated="2025-03-05T01:02:03+00:00",
            closed="2025-03-06T01:02:03+00:00",
            acs=["analysts", "alice"],
            acs_ro=["bob"],
            webhooks=["https://hooks.example.org/a"],
            iris_id=42,
        ),
        _older_case(name="phishing", iris_id=None),
    ]
    for case in good:
        _write(directory, case["guid"], msgspec.json.encode(case))
        # The service's own files beside the metadata stay where they are.
        (directory / case["guid"] / "data.d").mkdir()
    corrupted, wrong_type, other_guid, no_metadata = (str(uuid4()) for _ in range(4))
    _write(directory, corrupted, b'{"guid": "' + corrupted.encode() + b'", "name": ')
    _write(directory, wrong_type, msgspec.json.encode(_older_case(guid=wrong_type, acs=3)))
    _write(directory, other_guid, msgspec.json.encode(_older_case()))
    (directory / no_metadata).mkdir()
    # Not case folders: a service's data, and a GUID-looking file.
    (directory / "data").mkdir()
    (directory / "data" / "samples.zip").write_bytes(b"PK")
    (directory / str(uuid4())).write_text("not a folder")
    (directory / "cache").mkdir()
    identities = {
        "identities": [
            {"username": "alice", "groups": ["analysts"], "properties": {}},
            {"username": "zoe", "groups": ["readers"]},
        ]
    }
    (directory / "cache" / "identities.json").write_bytes(msgspec.json.encode(identities))
    refused = {
        corrupted: "metadata.json is not JSON",
        wrong_type: "Expected `array`, got `int` - at `$.acs`",
        other_guid: "is not its folder's name",
        no_metadata: "no metadata.json",
    }
    return directory, good, refused


@pytest.fixture
def service_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "service"
    directory.mkdir()
    (directory / "iris_service.py").write_text(SERVICE)
    importlib.invalidate_caches()
    monkeypatch.chdir(directory)
    try:
        yield directory
    finally:
        sys.modules.pop("iris_service", None)


def _refused(stderr: str) -> dict[str, str]:
    found = {}
    for line in stderr.splitlines():
        path, _, reason = line.removeprefix("fusion-server: ").partition(": refused: ")
        if reason:
            found[Path(path).name] = reason
    return found


async def test_import_is_complete_idempotent_refuses_bad_folders_and_is_served(
    tmp_path: Path,
    older: tuple[Path, list[dict[str, Any]], dict[str, str]],
    service_dir: Path,
    run_main: MainRunner,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    directory, good, refused = older
    config_file = write_config(tmp_path / "fusion.yml", server_config_dict(tmp_path / "data"))
    argv = ("import-data", "--config", str(config_file), "--app", "iris_service:create")
    first = await run_main.in_thread(main, *argv, str(directory))
    assert first.code == 1, first.stderr  # some folders were refused
    assert first.stdout.strip() == (
        f"{directory}: imported 2, already present 0, refused 4, skipped 2 (not case folders);"
        " identities: imported 2, already present 0"
    )
    reasons = _refused(first.stderr)
    assert reasons.keys() == refused.keys(), first.stderr
    for name, reason in refused.items():
        assert reason in reasons[name], (name, reasons[name])

    second = await run_main.in_thread(main, *argv, str(directory))
    assert second.code == 1
    assert second.stdout.strip() == (
        f"{directory}: imported 0, already present 2, refused 4, skipped 2 (not case folders);"
        " identities: imported 0, already present 2"
    )
    assert "already present with other content" not in second.stderr
    assert (directory / good[0]["guid"] / "data.d").is_dir()

    config = load_config(config_file, FusionServerConfig)
    running = await fusion_server(FusionServer(config, case_type=IrisCase))
    alice = http_sessions(running.url)
    assert (await login(alice, "alice"))[0] == 200
    status, body = await call(alice, "GET", "/api/cases")
    assert status == 200
    assert sorted(map(_values, body["data"]), key=str) == sorted(map(_values, good), key=str)
    for case in good:
        status, body = await call(alice, "GET", f"/api/case/{case['guid']}")
        assert status == 200
        assert body["data"].keys() == case.keys()
        # Every field, the service's iris_id included (datetimes as instants: Fusion
        # writes +00:00 as Z).
        assert _values(body["data"]) == _values(case)
    carol = http_sessions(running.url)
    assert (await login(carol, "carol"))[0] == 200
    for name in refused:
        status, body = await call(carol, "GET", f"/api/case/{name}")
        assert status == 404, (name, body)  # nothing of a refused folder was stored
    status, body = await call(alice, "GET", "/api/auth/identities")
    assert status == 200
    assert {identity["username"] for identity in body["data"]} >= {"alice", "zoe"}


async def test_fields_the_case_type_does_not_know_refuse_the_case(
    tmp_path: Path,
    older: tuple[Path, list[dict[str, Any]], dict[str, str]],
    run_main: MainRunner,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    directory, good, _ = older
    config_file = write_config(tmp_path / "fusion.yml", server_config_dict(tmp_path / "data"))
    # Without --app: Fusion's plain Case, which has no iris_id.
    result = await run_main.in_thread(
        main, "import-data", "--config", str(config_file), str(directory)
    )
    assert result.code == 1
    assert "imported 0, already present 0, refused 6" in result.stdout
    reasons = _refused(result.stderr)
    for case in good:
        assert reasons[case["guid"]].startswith(
            "fields the case type Case does not know: iris_id"
        ), reasons
    running = await fusion_server(load_config(config_file))
    alice = http_sessions(running.url)
    assert (await login(alice, "alice"))[0] == 200
    status, body = await call(alice, "GET", "/api/cases")
    assert status == 200
    assert body["data"] == []


def test_a_changed_file_of_a_present_case_is_reported_and_the_stored_case_kept(
    tmp_path: Path, service_dir: Path, run_main: MainRunner
) -> None:
    directory = tmp_path / "older"
    case = _older_case(name="before")
    _write(directory, case["guid"], msgspec.json.encode(case))
    config_file = write_config(tmp_path / "fusion.yml", server_config_dict(tmp_path / "data"))
    argv = ("import-data", "--config", str(config_file), "--app", "iris_service:create")
    assert run_main(main, *argv, str(directory)).code == 0
    (directory / case["guid"] / "metadata.json").write_bytes(
        msgspec.json.encode({**case, "name": "after"})
    )
    again = run_main(main, *argv, str(directory))
    assert again.code == 0
    assert "imported 0, already present 1, refused 0" in again.stdout
    assert f"{case['guid']}: already present with other content" in again.stderr


def test_a_missing_directory_is_one_error_line(tmp_path: Path, run_main: MainRunner) -> None:
    result = run_main(main, "import-data", str(tmp_path / "nowhere"))
    assert result.code == 2
    assert result.stderr.strip() == f"fusion-server: error: {tmp_path / 'nowhere'}: not a directory"


async def test_without_config_the_data_dir_serve_uses_receives_the_cases(
    tmp_path: Path, run_main: MainRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "older"
    case = _older_case(name="plain", iris_id=None)
    del case["iris_id"]
    _write(directory, case["guid"], msgspec.json.encode(case))
    monkeypatch.chdir(tmp_path)
    result = await run_main.in_thread(main, "import-data", str(directory))
    assert result.code == 0, result.stderr
    assert "imported 1, already present 0, refused 0" in result.stdout
    assert result.stderr == ""  # no admin password generated by an import
    other = tmp_path / "elsewhere"
    result = await run_main.in_thread(main, "import-data", "--data-dir", str(other), str(directory))
    assert "imported 1, already present 0" in result.stdout
    for data_dir in (tmp_path / "fusion-data", other):
        async with SQLiteStorage(data_dir) as storage:
            stored = await storage.enumerate_cases()
        assert [_values(item.to_dict()) for item in stored] == [_values(case)]
