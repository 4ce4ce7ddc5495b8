"""The release helper on a copy of the repository layout."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_release() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fusion_release", ROOT / "tools" / "release.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fusion_release"] = module
    spec.loader.exec_module(module)
    return module


release = load_release()

CHANGELOG = """# Changelog

## Unreleased

### fusion-concept
- Case gained `tsid`.

### fusion-client
- Downloads resume.
- Events reconnect.

## fusion-client 0.1.0 (2026-11-01)
- First release.
"""


def copy_layout(root: Path, version: str, changelog: str) -> Path:
    """The packages' __about__.py (set to ``version``) and pyproject.toml, and a changelog."""
    for package in release.PACKAGES:
        short = package.removeprefix("fusion-")
        about = root / "packages" / package / "src" / "fusion" / short / "__about__.py"
        about.parent.mkdir(parents=True)
        shutil.copy(ROOT / "packages" / package / "src" / "fusion" / short / "__about__.py", about)
        about.write_text(f'__version__ = "{version}"\n')
        shutil.copy(ROOT / "packages" / package / "pyproject.toml", about.parents[3])
    (root / "CHANGELOG.md").write_text(changelog)
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_layout(tmp_path, "1.2.3", CHANGELOG)


def test_bump_moves_only_that_package(repo: Path) -> None:
    version = release.bump("fusion-client", "minor", root=repo, date="2026-11-28").version
    assert version == "1.3.0"
    assert release.read_version("fusion-client", repo) == "1.3.0"
    assert release.read_version("fusion-concept", repo) == "1.2.3"
    text = (repo / "CHANGELOG.md").read_text()
    assert text == (
        "# Changelog\n\n## Unreleased\n\n### fusion-concept\n- Case gained `tsid`.\n\n"
        "## fusion-client 1.3.0 (2026-11-28)\n- Downloads resume.\n- Events reconnect.\n\n"
        "## fusion-client 0.1.0 (2026-11-01)\n- First release.\n"
    )


@pytest.mark.parametrize(
    ("part", "expected"), [("major", "2.0.0"), ("patch", "1.2.4"), ("4.0.1", "4.0.1")]
)
def test_version_parts(part: str, expected: str) -> None:
    assert release.next_version("1.2.3", part) == expected


def test_bump_refuses_without_entries(repo: Path) -> None:
    with pytest.raises(release.ReleaseError, match="no '### fusion-server'"):
        release.bump("fusion-server", "patch", root=repo)
    assert release.read_version("fusion-server", repo) == "1.2.3"
    assert (repo / "CHANGELOG.md").read_text() == CHANGELOG


def test_check_tag(repo: Path) -> None:
    assert release.check_tag("fusion-helper-v1.2.3", root=repo) == "fusion-helper"
    with pytest.raises(release.ReleaseError, match=r"says 1\.2\.4"):
        release.check_tag("fusion-helper-v1.2.4", root=repo)
    with pytest.raises(release.ReleaseError, match="not <package>"):
        release.check_tag("fusion-other-v1.0.0", root=repo)


# The layout as it is today: every package at 0.1.0, siblings pinned ~=0.1.0.
CHANGELOG_0_1 = """# Changelog

## Unreleased

### workspace
- CI runs on 3.13.

### fusion-concept
- Case gained `tsid`.

### fusion-client
- Downloads resume.
"""


@pytest.fixture
def repo_0_1(tmp_path: Path) -> Path:
    return copy_layout(tmp_path, "0.1.0", CHANGELOG_0_1)


def pyprojects(root: Path) -> dict[str, str]:
    return {p: (root / "packages" / p / "pyproject.toml").read_text() for p in release.PACKAGES}


def test_the_tree_pins_siblings_compatibly() -> None:
    # Every sibling requirement of the real packages is a ~= pin admitting the sibling.
    assert release.check_pins(ROOT) == []
    pins = {
        package: sorted(r.text for r in release.sibling_requirements(text))
        for package, text in pyprojects(ROOT).items()
    }
    assert pins == {
        "fusion-concept": [],
        "fusion-helper": ["fusion-concept~=0.1.0"],
        "fusion-server": ["fusion-concept~=0.1.0", "fusion-helper[redis]~=0.1.0"],
        "fusion-client": ["fusion-concept~=0.1.0", "fusion-helper~=0.1.0"],
    }


@pytest.mark.parametrize(
    ("spec", "version", "admitted"),
    [
        ("~=0.1.0", "0.1.0", True),
        ("~=0.1.0", "0.1.7", True),
        ("~=0.1.0", "0.2.0", False),  # below 1.0 a minor release may break
        ("~=0.1.0", "1.0.0", False),
        ("~=0.1.3", "0.1.2", False),
        ("~=1.2", "1.9.0", True),
        ("~=1.2", "1.1.0", False),
        ("~=1.2", "2.0.0", False),
    ],
)
def test_pin_admits(spec: str, version: str, admitted: bool) -> None:
    assert release.pin_admits(spec, version) is admitted


def test_compatible_pin() -> None:
    assert release.compatible_pin("0.2.0") == "~=0.2.0"
    assert release.compatible_pin("0.2.3") == "~=0.2.3"
    assert release.compatible_pin("1.3.0") == "~=1.3"
    assert release.compatible_pin("2.0.0") == "~=2.0"


def test_minor_bump_below_1_moves_the_dependents_pins(repo_0_1: Path) -> None:
    before = pyprojects(repo_0_1)
    result = release.bump("fusion-concept", "minor", root=repo_0_1, date="2026-12-01")
    assert result.version == "0.2.0"
    assert result.pins == {
        "fusion-helper": [("fusion-concept~=0.1.0", "fusion-concept~=0.2.0")],
        "fusion-server": [("fusion-concept~=0.1.0", "fusion-concept~=0.2.0")],
        "fusion-client": [("fusion-concept~=0.1.0", "fusion-concept~=0.2.0")],
    }
    after = pyprojects(repo_0_1)
    assert after["fusion-concept"] == before["fusion-concept"]
    for package in ("fusion-helper", "fusion-server", "fusion-client"):
        # only the pin changed, the rest of the file is as it was
        assert after[package] == before[package].replace(
            '"fusion-concept~=0.1.0"', '"fusion-concept~=0.2.0"'
        )
    assert release.check_pins(repo_0_1) == []
    # the dependents must be released too: their groups say why, at the end of their lists
    assert (repo_0_1 / "CHANGELOG.md").read_text() == (
        "# Changelog\n\n## Unreleased\n\n### workspace\n- CI runs on 3.13.\n\n"
        "### fusion-client\n- Downloads resume.\n"
        "- Requires `fusion-concept~=0.2.0` (was `fusion-concept~=0.1.0`), for fusion-concept"
        " 0.2.0.\n\n"
        "### fusion-helper\n"
        "- Requires `fusion-concept~=0.2.0` (was `fusion-concept~=0.1.0`), for fusion-concept"
        " 0.2.0.\n\n"
        "### fusion-server\n"
        "- Requires `fusion-concept~=0.2.0` (was `fusion-concept~=0.1.0`), for fusion-concept"
        " 0.2.0.\n\n"
        "## fusion-concept 0.2.0 (2026-12-01)\n- Case gained `tsid`.\n"
    )


def test_helper_bump_keeps_the_extra(repo_0_1: Path) -> None:
    changelog = CHANGELOG_0_1 + "\n### fusion-helper\n- Zip is faster.\n"
    (repo_0_1 / "CHANGELOG.md").write_text(changelog)
    result = release.bump("fusion-helper", "minor", root=repo_0_1)
    assert result.pins == {
        "fusion-server": [("fusion-helper[redis]~=0.1.0", "fusion-helper[redis]~=0.2.0")],
        "fusion-client": [("fusion-helper~=0.1.0", "fusion-helper~=0.2.0")],
    }
    server = release.sibling_requirements(pyprojects(repo_0_1)["fusion-server"])
    assert sorted(r.text for r in server) == [
        "fusion-concept~=0.1.0",
        "fusion-helper[redis]~=0.2.0",
    ]


def test_patch_bump_keeps_pins(repo_0_1: Path) -> None:
    before = pyprojects(repo_0_1)
    result = release.bump("fusion-concept", "patch", root=repo_0_1, date="2026-12-01")
    assert (result.version, result.pins) == ("0.1.1", {})
    assert pyprojects(repo_0_1) == before
    text = (repo_0_1 / "CHANGELOG.md").read_text()
    assert "Requires" not in text
    assert "### workspace\n- CI runs on 3.13.\n" in text  # never released, left in place


def test_major_bump_to_1_pins_major_minor(repo_0_1: Path) -> None:
    result = release.bump("fusion-concept", "major", root=repo_0_1)
    assert result.version == "1.0.0"
    assert result.pins["fusion-helper"] == [("fusion-concept~=0.1.0", "fusion-concept~=1.0")]


def test_bump_refuses_an_open_pin_and_changes_nothing(repo_0_1: Path) -> None:
    helper = repo_0_1 / "packages" / "fusion-helper" / "pyproject.toml"
    text = helper.read_text()
    helper.write_text(text.replace('"fusion-concept~=0.1.0"', '"fusion-concept>=0.1"'))
    before = pyprojects(repo_0_1)
    assert release.check_pins(repo_0_1) == [
        "fusion-helper: 'fusion-concept>=0.1': pin '>=0.1' is not a compatible release"
        " (~=X.Y or ~=X.Y.Z)"
    ]
    with pytest.raises(release.ReleaseError, match="not a compatible release"):
        release.bump("fusion-concept", "minor", root=repo_0_1)
    assert pyprojects(repo_0_1) == before
    assert release.read_version("fusion-concept", repo_0_1) == "0.1.0"
    assert (repo_0_1 / "CHANGELOG.md").read_text() == CHANGELOG_0_1


def test_workspace_is_not_a_package(repo_0_1: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        release.main(["bump", "workspace", "minor"])
    assert "invalid choice: 'workspace'" in capsys.readouterr().err
