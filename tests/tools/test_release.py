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


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for package in release.PACKAGES:
        short = package.removeprefix("fusion-")
        about = tmp_path / "packages" / package / "src" / "fusion" / short / "__about__.py"
        about.parent.mkdir(parents=True)
        shutil.copy(ROOT / "packages" / package / "src" / "fusion" / short / "__about__.py", about)
        about.write_text('__version__ = "1.2.3"\n')
    (tmp_path / "CHANGELOG.md").write_text(CHANGELOG)
    return tmp_path


def test_bump_moves_only_that_package(repo: Path) -> None:
    version = release.bump("fusion-client", "minor", root=repo, date="2026-11-28")
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
