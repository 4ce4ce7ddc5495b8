"""docs/migration.md covers every ``edf_fusion`` name the older services use.

``tests/docs/edf_fusion_names.txt`` is the output of ``tools/edf_names.py``
over the five services built on the older framework (edf-carbon-server,
edf-helium-server, edf-iron-server, edf-iron-x-iris, edf-neon-server). The
guide's table must have one row per name of that list, each row naming a
Fusion name that exists (or saying "none" and what to do instead). This check
reads only files of the repository, so it never skips.

Whether the list is still what the script makes from the services is checked
only where their unpacked wheels are (``$EDF_DIR``, by default ``/tmp/edf``):
the wheels are not part of the repository, so that one test skips elsewhere.

What the guide shows of ``migrate-config`` and the ``keycloak`` backend is the
commands' own output: its older files are migrated here and the lines and
blocks it prints next to them compared, and the Keycloak configuration is
served on a loopback port and its ``GET /api/auth/config`` compared with the
answer the guide shows.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from uuid import uuid4

import msgspec
import pytest
from fusion_testing.fixtures_cli import MainRunner
from fusion_testing.fixtures_server import HTTPSessionFactory, ServerFactory, call

from fusion.server import FusionServerConfig, decode_config
from fusion.server.cli import main

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "migration.md"
NAMES = Path(__file__).with_name("edf_fusion_names.txt")
SCRIPT = ROOT / "tools" / "edf_names.py"
EDF_DIR = Path(os.environ.get("EDF_DIR", "/tmp/edf"))
_TABLE_HEADING = "## Every older name"
_ROW_RE = re.compile(r"^\| `(?P<old>edf_fusion\.[\w.]+)` \| (?P<new>.*?) \| (?P<why>.*) \|$")
_FUSION_NAME_RE = re.compile(r"^`(?P<name>fusion\.[\w.]+)`$")
_BLOCK_RE = re.compile(r"\n```(?P<lang>[a-z]+)\n(?P<code>.*?)\n```", re.DOTALL)


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fusion_edf_names", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fusion_edf_names"] = module
    spec.loader.exec_module(module)
    return module


def listed_names() -> list[str]:
    return NAMES.read_text(encoding="utf-8").split()


def table_rows() -> dict[str, tuple[str, str]]:
    """``old name -> (Fusion column, why column)`` of the guide's names table."""
    text = GUIDE.read_text(encoding="utf-8")
    assert _TABLE_HEADING in text, f"{GUIDE.name} has no {_TABLE_HEADING!r} section"
    section = text.split(_TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        match = _ROW_RE.match(line)
        if match is None:
            continue
        assert match["old"] not in rows, f"{match['old']} has two rows"
        rows[match["old"]] = (match["new"].strip(), match["why"].strip())
    return rows


def resolve(dotted: str) -> object:
    """The object a dotted name names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)  # AttributeError: the guide names nothing
        return found
    raise ModuleNotFoundError(dotted)


def test_the_list_holds_the_services_names() -> None:
    names = listed_names()
    assert names == sorted(set(names)), "the list is sorted and has each name once"
    assert len(names) >= 50, f"only {len(names)} names: the list was truncated"
    # A few every service uses: the list is the real one, not an empty placeholder.
    for name in (
        "edf_fusion.server.auth.Action",
        "edf_fusion.server.storage.FusionStorage",
        "edf_fusion.helper.logging.get_logger",
        "edf_fusion.client.FusionClient",
    ):
        assert name in names


def test_the_guide_has_a_row_for_every_name() -> None:
    rows = table_rows()
    missing = [name for name in listed_names() if name not in rows]
    assert not missing, f"docs/migration.md's table misses: {', '.join(missing)}"


def test_the_guide_has_no_row_for_a_name_no_service_uses() -> None:
    # A row the list does not have is a typo in the old name, or a name the
    # services stopped using (then regenerate the list with tools/edf_names.py).
    extra = sorted(set(table_rows()) - set(listed_names()))
    assert not extra, f"rows for names outside edf_fusion_names.txt: {', '.join(extra)}"


def test_every_row_names_a_fusion_name_that_exists_or_says_what_to_do() -> None:
    for old, (new, why) in table_rows().items():
        assert why, f"{old}: the row does not say what changed"
        if new == "none":
            assert len(why) > 20, f"{old}: no equivalent, and the row does not say what to do"
            continue
        match = _FUSION_NAME_RE.match(new)
        assert match is not None, f"{old}: {new!r} is neither `fusion.<module>.<name>` nor none"
        try:
            resolve(match["name"])
        except (ImportError, AttributeError) as exc:
            pytest.fail(f"{old}: the guide names {match['name']}, which does not exist ({exc})")


def test_the_script_reads_every_import_form() -> None:
    script = load_script()
    source = "\n".join(
        [
            "import os",
            "import edf_fusion.helper.zip as zipping",
            "import edf_fusion.server.case",
            "from edf_fusion.concept import Case as FusionCase, Identity",
            "from edf_fusion_other import Thing",  # another package, not edf_fusion
            "from . import local",
            "zipping.create_zip(a, b)",
            "edf_fusion.server.case.FusionCaseAPI",
            "os.path.join('a')",
        ]
    )
    assert script.names_in_source(source) == {
        "edf_fusion.helper.zip.create_zip",
        "edf_fusion.server.case.FusionCaseAPI",
        "edf_fusion.concept.Case",
        "edf_fusion.concept.Identity",
    }


def test_the_list_is_what_the_script_makes_from_the_services() -> None:
    if not all((EDF_DIR / service).is_dir() for service in load_script().SERVICES):
        pytest.skip(
            f"the older services' unpacked wheels are not in {EDF_DIR} (set EDF_DIR): "
            "they are not part of the repository; the guide's table is still checked "
            "against the committed list by the other tests"
        )
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(EDF_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == NAMES.read_text(encoding="utf-8"), (
        "tests/docs/edf_fusion_names.txt is stale: "
        "python tools/edf_names.py > tests/docs/edf_fusion_names.txt"
    )


def guide_block(lang: str, marker: str) -> str:
    """The one ``lang`` block of the guide that holds ``marker``."""
    found = [
        match["code"]
        for match in _BLOCK_RE.finditer(GUIDE.read_text(encoding="utf-8"))
        if match["lang"] == lang and marker in match["code"]
    ]
    assert len(found) == 1, f"{len(found)} {lang} blocks of {GUIDE.name} hold {marker!r}"
    return found[0]


def test_migrate_config_prints_what_the_guide_shows_for_the_older_iron_file(
    tmp_path: Path, run_main: MainRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("iron.yml").write_text(guide_block("text", "synchronizer: {enabled: true"))
    shown = guide_block("console", "migrate-config iron.yml").splitlines()
    result = run_main(main, "migrate-config", "iron.yml")
    assert str(result.code) == shown[shown.index("$ echo $?") + 1]
    expected = [line for line in shown if line.startswith("fusion-server: iron.yml: ")]
    assert result.stderr.splitlines() == expected
    migrated = msgspec.yaml.decode(result.stdout.encode())
    # The older digest is copied unchanged, and is the one of the Fusion file shown.
    fusion_file = msgspec.yaml.decode(guide_block("yaml", "IRON_STORE").encode())
    assert migrated["auth"]["backend"] == fusion_file["auth"]["backend"]


def test_migrate_config_prints_the_guide_keycloak_section(
    tmp_path: Path, run_main: MainRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("old.yml").write_text(guide_block("text", "strategy: keycloak"))
    result = run_main(main, "migrate-config", "old.yml")
    assert result.code == 0, result.stderr
    migrated = msgspec.yaml.decode(result.stdout.encode())
    shown = msgspec.yaml.decode(guide_block("yaml", "type: keycloak").encode())
    # The guide moved the older plain secret to the environment.
    assert migrated["auth"]["backend"].pop("client_secret") == "the-older-plain-secret"
    assert shown["auth"]["backend"].pop("client_secret") == "${KEYCLOAK_CLIENT_SECRET}"
    assert migrated == shown


async def test_the_guide_keycloak_config_answers_the_auth_config_shown(
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "keycloak-client-secret-0123456789"
    monkeypatch.setenv("KEYCLOAK_CLIENT_SECRET", secret)
    block = msgspec.yaml.decode(guide_block("yaml", "type: keycloak").encode())
    block["storage"] = {"data_dir": str(tmp_path)}
    config = decode_config(block, FusionServerConfig, source="the guide")
    running = await fusion_server(config)
    status, body = await call(http_sessions(running.url), "GET", "/api/auth/config")
    assert status == 200, body
    assert body == msgspec.json.decode(guide_block("json", '"type": "keycloak"'))
    assert secret not in str(body)


def test_import_data_prints_the_report_lines_the_guide_shows(
    tmp_path: Path, run_main: MainRunner
) -> None:
    older = tmp_path / "older"
    for index in range(3):
        guid = str(uuid4())
        case = {"guid": guid, "created": "2025-03-04T05:06:07+00:00", "name": f"case {index}"}
        (older / guid).mkdir(parents=True)
        (older / guid / "metadata.json").write_bytes(msgspec.json.encode(case))
    identities = {"identities": [{"username": "alice", "groups": ["cert"]}, {"username": "bob"}]}
    (older / "cache").mkdir()
    (older / "cache" / "identities.json").write_bytes(msgspec.json.encode(identities))
    shown = [
        line.removeprefix("/srv/iron/data: ")
        for line in guide_block("console", "import-data --app").splitlines()
        if line.startswith("/srv/iron/data: ")
    ]
    assert len(shown) == 2, "the guide shows a first run and a second one"
    printed = []
    for _run in shown:
        result = run_main(main, "import-data", "--data-dir", str(tmp_path / "data"), str(older))
        assert result.code == 0, result.stderr
        printed.append(result.stdout.strip().removeprefix(f"{older}: "))
    assert printed == [
        "imported 3, already present 0, refused 0, skipped 0 (not case folders);"
        " identities: imported 2, already present 0",
        "imported 0, already present 3, refused 0, skipped 0 (not case folders);"
        " identities: imported 0, already present 2",
    ]
    # The guide's lines are these, with its own counts: the same words, the same order.
    assert [re.sub(r"\d+", "N", line) for line in shown] == [
        re.sub(r"\d+", "N", line) for line in printed
    ]
