"""The GitHub workflows: the suite on every supported Python, publishing gated on CI."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _workflow(name: str) -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    # YAML 1.1 reads the key `on` as True
    return {("on" if key is True else str(key)): value for key, value in loaded.items()}


def test_ci_tests_every_python_of_the_hatch_matrix() -> None:
    ci = _workflow("ci.yml")
    (matrix,) = tomllib.loads((ROOT / "hatch.toml").read_text())["envs"]["hatch-test"]["matrix"]
    test = ci["jobs"]["test"]
    assert test["strategy"]["matrix"]["python"] == matrix["python"]
    assert {"run": "hatch test --python ${{ matrix.python }}"} in test["steps"]
    assert test["env"]["FUSION_REQUIRE_SERVICES"] == "1"


def test_changelog_is_checked_on_pull_requests() -> None:
    job = _workflow("ci.yml")["jobs"]["changelog"]
    assert "github.event_name == 'pull_request'" in job["if"]
    checkout = job["steps"][0]
    assert checkout["with"]["fetch-depth"] == 0
    assert {"run": 'python tools/changelog_check.py "origin/${{ github.base_ref }}"'} in job[
        "steps"
    ]


def test_publishing_needs_ci_to_pass() -> None:
    ci = _workflow("ci.yml")
    assert "workflow_call" in ci["on"]
    release = _workflow("release.yml")
    assert release["jobs"]["ci"] == {"uses": "./.github/workflows/ci.yml"}
    assert set(release["jobs"]["publish"]["needs"]) == {"ci", "build"}
