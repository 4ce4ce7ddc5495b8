"""The hatch-test environments: every supported Python, and members that test the tree.

`hatch test --python 3.12` selects nothing unless the workspace's matrix lists 3.12,
so the matrix must list every Python the packages declare. Each package's own
hatch-test env (for `cd packages/<name> && hatch test`) installs the whole workspace
editable and must keep the workspace env's test dependencies and extras.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fusion-concept", "fusion-helper", "fusion-server", "fusion-client")


def _pyproject(package: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())


def _workspace_test_env() -> dict[str, Any]:
    env: dict[str, Any] = tomllib.loads((ROOT / "hatch.toml").read_text())["envs"]["hatch-test"]
    return env


def _declared_pythons(package: str) -> list[str]:
    project = _pyproject(package)["project"]
    classifiers = project["classifiers"]
    versions = [
        m[1]
        for c in classifiers
        if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
    ]
    assert project["requires-python"] == f">={versions[0]}", package
    return versions


def test_workspace_matrix_lists_every_supported_python() -> None:
    (matrix,) = _workspace_test_env()["matrix"]
    for package in PACKAGES:
        assert matrix["python"] == _declared_pythons(package), package


@pytest.mark.parametrize("package", PACKAGES)
def test_member_env_tests_the_tree(package: str) -> None:
    root_env = _workspace_test_env()
    env = _pyproject(package)["tool"]["hatch"]["envs"]["hatch-test"]
    package_dir = ROOT / "packages" / package

    # The project is not installed on its own (from an index it would look for its
    # siblings): the members glob installs all four, this one included, editable.
    assert env["skip-install"] is True
    assert env["workspace"]["members"] == ["../fusion-*"]
    matched = sorted(path.name for path in package_dir.parent.glob("fusion-*") if path.is_dir())
    assert matched == sorted(PACKAGES)

    # Same test dependencies as the workspace env, plus the extras it installs by feature.
    server_ldap = _pyproject("fusion-server")["project"]["optional-dependencies"]["ldap"]
    concept_extras = _pyproject("fusion-concept")["project"]["optional-dependencies"]
    assert env["extra-dependencies"] == [*root_env["extra-dependencies"], *server_ldap]
    for requirement in (*concept_extras["yaml"], *concept_extras["toml"]):
        assert requirement in env["extra-dependencies"]

    short = package.removeprefix("fusion-")
    assert env["default-args"] == [f"../../tests/{short}"]
    assert (package_dir / env["default-args"][0]).is_dir()
    assert env["matrix"] == root_env["matrix"]
    for key in ("randomize", "parallel"):
        assert env[key] == root_env[key]
