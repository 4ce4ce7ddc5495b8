"""Wheels of fusion-concept and fusion-helper install only what they declare."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not found (it comes with hatch: pip install hatch)")
    return uv


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = _uv()
    out = tmp_path_factory.mktemp("wheels")
    for package in ("fusion-concept", "fusion-helper"):
        subprocess.run(
            [uv, "build", "--wheel", "--quiet", "-o", str(out), str(ROOT / "packages" / package)],
            check=True,
        )
    return out


def _venv(path: Path) -> Path:
    subprocess.run([_uv(), "venv", "--quiet", "--python", sys.executable, str(path)], check=True)
    return path / "bin" / "python"


def _install(python: Path, wheels: Path, *requirements: str) -> set[str]:
    subprocess.run(
        [
            _uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "--find-links",
            str(wheels),
            *requirements,
        ],
        check=True,
    )
    listing = subprocess.run(
        [_uv(), "pip", "freeze", "--python", str(python)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line.split("==")[0].split(" @ ")[0].lower() for line in listing.split()}


def test_concept_wheel_installs_msgspec_only(wheels: Path, tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    installed = _install(python, wheels, "fusion-concept")
    assert installed == {"fusion-concept", "msgspec"}
    out = subprocess.run(
        [str(python), "-c", "from fusion.concept import Case; print(Case(name='x').name)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip() == "x"


def test_helper_without_extra_installs_no_redis(wheels: Path, tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    installed = _install(python, wheels, "fusion-helper")
    assert {"fusion-concept", "fusion-helper", "msgspec", "aiohttp", "aiofiles"} <= installed
    assert "redis" not in installed
    # the memory store works without redis; asking for Redis says what to install
    script = (
        "from fusion.helper.store import create_store\n"
        "print(type(create_store('memory://')).__name__)\n"
        "try:\n    create_store('redis://127.0.0.1:6379/0')\n"
        "except ValueError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [str(python), "-c", script], check=True, capture_output=True, text=True
    ).stdout
    assert out.splitlines()[0] == "MemoryStore"
    assert "pip install 'fusion-helper[redis]'" in out
