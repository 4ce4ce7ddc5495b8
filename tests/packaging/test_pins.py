"""Sibling pins as the wheels publish them, checked with the real PEP 440 rules.

The four wheels are built with uv; each one's ``Requires-Dist`` on a sibling must be
the compatible-release pin of that sibling's current version (``~=0.1.0`` below 1.0,
which admits 0.1.x and not 0.2.0). fusion-server gets redis through
``fusion-helper[redis]`` only. After ``tools/release.py bump fusion-concept minor``
on a copy of the packages, the rebuilt dependents admit the new concept.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _load_release() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fusion_release_pins", ROOT / "tools/release.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fusion_release_pins"] = module
    spec.loader.exec_module(module)
    return module


release = _load_release()


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not found (it comes with hatch: pip install hatch)")
    return uv


def build_wheel(package_dir: Path, out: Path) -> Path:
    subprocess.run(
        [_uv(), "build", "--wheel", "--quiet", "-o", str(out), str(package_dir)],
        check=True,
        timeout=120,
    )
    name = package_dir.name.replace("-", "_")
    (wheel,) = out.glob(f"{name}-*.whl")
    return wheel


def requires(wheel: Path) -> dict[str, Requirement]:
    """The wheel's Requires-Dist, by distribution name (extras' markers included)."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        headers = HeaderParser().parsestr(archive.read(metadata).decode())
    found: dict[str, Requirement] = {}
    for line in headers.get_all("Requires-Dist", []):
        requirement = Requirement(line)
        assert requirement.name not in found, f"{requirement.name} required twice in {wheel.name}"
        found[requirement.name] = requirement
    return found


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("pinned-wheels")
    return {p: build_wheel(ROOT / "packages" / p, out) for p in release.PACKAGES}


def test_wheels_pin_siblings_to_the_compatible_range(wheels: dict[str, Path]) -> None:
    expected = {
        "fusion-concept": set(),
        "fusion-helper": {"fusion-concept"},
        "fusion-server": {"fusion-concept", "fusion-helper"},
        "fusion-client": {"fusion-concept", "fusion-helper"},
    }
    for package, wheel in wheels.items():
        siblings = {n: r for n, r in requires(wheel).items() if n in release.PACKAGES}
        assert set(siblings) == expected[package], wheel.name
        for name, requirement in siblings.items():
            current = release.read_version(name)
            assert str(requirement.specifier) == release.compatible_pin(current)
            major, minor, patch = (int(part) for part in current.split("."))
            assert requirement.specifier.contains(current)
            assert requirement.specifier.contains(f"{major}.{minor}.{patch + 1}")
            if major == 0:  # below 1.0 the next minor may break: not admitted
                assert not requirement.specifier.contains(f"0.{minor + 1}.0")
            assert not requirement.specifier.contains(f"{major + 1}.0.0")


def test_server_declares_redis_once_through_the_helper_extra(wheels: dict[str, Path]) -> None:
    server = requires(wheels["fusion-server"])
    assert "redis" not in server
    assert server["fusion-helper"].extras == {"redis"}
    helper = requires(wheels["fusion-helper"])
    assert helper["redis"].marker is not None
    assert str(helper["redis"].marker) == 'extra == "redis"'


def test_bumped_concept_moves_the_published_pins(tmp_path: Path) -> None:
    shutil.copytree(
        ROOT / "packages",
        tmp_path / "packages",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "dist", "build"),
    )
    (tmp_path / "CHANGELOG.md").write_text(
        "# Changelog\n\n## Unreleased\n\n### fusion-concept\n- Breaking change.\n"
    )
    old = requires(build_wheel(tmp_path / "packages" / "fusion-helper", tmp_path / "before"))
    result = release.bump("fusion-concept", "minor", root=tmp_path)
    assert not old["fusion-concept"].specifier.contains(result.version)
    for package in ("fusion-helper", "fusion-server", "fusion-client"):
        new = requires(build_wheel(tmp_path / "packages" / package, tmp_path / package))
        assert new["fusion-concept"].specifier.contains(result.version), package
        assert str(new["fusion-concept"].specifier) == release.compatible_pin(result.version)
