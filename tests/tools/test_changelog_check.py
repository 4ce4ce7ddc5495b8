"""tools/changelog_check.py on a real git repository made by the test."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_check() -> ModuleType:
    path = ROOT / "tools" / "changelog_check.py"
    spec = importlib.util.spec_from_file_location("fusion_changelog_check", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fusion_changelog_check"] = module
    spec.loader.exec_module(module)
    return module


changelog_check = load_check()

CHANGELOG = """# Changelog

## Unreleased

### fusion-concept
- Case gained `tsid`.

### fusion-server
- Webhooks retry.
"""

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    )
    return done.stdout


def write(repo: Path, relative: str, text: str) -> None:
    path = repo / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main: two packages and a changelog; the test works on branch `work`."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for name in ("fusion-concept", "fusion-server"):
        short = name.removeprefix("fusion-")
        write(repo, f"packages/{name}/pyproject.toml", f'[project]\nname = "{name}"\n')
        write(repo, f"packages/{name}/README.md", f"# {name}\n")
        write(repo, f"packages/{name}/src/fusion/{short}/__about__.py", '__version__ = "0.1.0"\n')
        write(repo, f"packages/{name}/src/fusion/{short}/core.py", "X = 1\n")
    write(repo, "tools/release.py", "# release\n")
    write(repo, "CHANGELOG.md", CHANGELOG)
    commit(repo, "start")
    git(repo, "checkout", "-q", "-b", "work")
    return repo


def run(repo: Path, capsys: pytest.CaptureFixture[str], base: str = "main") -> tuple[int, str]:
    status = changelog_check.main([base, "--repo", str(repo)])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def add_entry(repo: Path, group: str, line: str) -> None:
    text = (repo / "CHANGELOG.md").read_text()
    if f"### {group}\n" in text:
        text = text.replace(f"### {group}\n", f"### {group}\n{line}\n", 1)
    else:
        text = text.rstrip("\n") + f"\n\n### {group}\n{line}\n"
    (repo / "CHANGELOG.md").write_text(text)


def test_code_change_without_entry_fails(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo, "packages/fusion-server/src/fusion/server/core.py", "X = 2\n")
    commit(repo, "server change")
    status, out = run(repo, capsys)
    assert status == 1
    assert (
        "fusion-server changed (packages/fusion-server/src/fusion/server/core.py) but "
        "CHANGELOG.md gained no line under '### fusion-server' in '## Unreleased'" in out
    )
    assert "fusion-concept" not in out

    add_entry(repo, "fusion-server", "- Core is 2.")
    commit(repo, "its entry")
    status, out = run(repo, capsys)
    assert (status, out) == (
        0,
        "changelog: fusion-server: 1 new line(s) under '### fusion-server'\n",
    )


def test_uncommitted_and_untracked_changes_count(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(repo, "packages/fusion-concept/src/fusion/concept/new_module.py", "Y = 1\n")  # untracked
    write(repo, "packages/fusion-server/src/fusion/server/core.py", "X = 3\n")  # not committed
    status, out = run(repo, capsys)
    assert status == 1
    assert (
        "fusion-concept changed (packages/fusion-concept/src/fusion/concept/new_module.py)" in out
    )
    assert "fusion-server changed (packages/fusion-server/src/fusion/server/core.py)" in out


def test_an_entry_elsewhere_does_not_count(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo, "packages/fusion-server/src/fusion/server/core.py", "X = 2\n")
    add_entry(repo, "fusion-concept", "- Unrelated.")
    add_entry(repo, "workspace", "- CI on 3.13.")
    commit(repo, "server change, entries elsewhere")
    status, out = run(repo, capsys)
    assert status == 1
    assert "fusion-server changed" in out
    # an existing line moved around is not a new entry either
    text = (repo / "CHANGELOG.md").read_text()
    (repo / "CHANGELOG.md").write_text(text.replace("- Webhooks retry.\n", "\n- Webhooks retry.\n"))
    assert run(repo, capsys)[0] == 1


def test_changes_outside_src_need_no_entry(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo, "packages/fusion-server/README.md", "# fusion-server, documented\n")
    write(repo, "packages/fusion-server/pyproject.toml", '[project]\nname = "fusion-server"\n#\n')
    write(repo, "tools/release.py", "# release, better\n")
    add_entry(repo, "workspace", "- The release tool is better.")
    commit(repo, "docs and tooling")
    status, out = run(repo, capsys)
    assert (status, out) == (0, "changelog: no package code changed since main\n")


def test_unknown_group_is_refused(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo, "packages/fusion-server/src/fusion/server/core.py", "X = 2\n")
    add_entry(repo, "fusion-server", "- Core is 2.")
    add_entry(repo, "fusion-sever", "- A typo.")
    status, out = run(repo, capsys)
    assert status == 1
    assert "'### fusion-sever' under '## Unreleased' is not a package" in out
    assert "fusion-server: 1 new line(s)" in out


def test_a_release_cut_passes(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # what tools/release.py bump does: the version moves, the entries leave "Unreleased"
    write(
        repo, "packages/fusion-concept/src/fusion/concept/__about__.py", '__version__ = "0.2.0"\n'
    )
    text = (repo / "CHANGELOG.md").read_text()
    text = text.replace("### fusion-concept\n- Case gained `tsid`.\n\n", "")
    text += "\n## fusion-concept 0.2.0 (2026-12-01)\n- Case gained `tsid`.\n"
    (repo / "CHANGELOG.md").write_text(text)
    commit(repo, "release fusion-concept 0.2.0")
    status, out = run(repo, capsys)
    assert (status, out) == (0, "changelog: fusion-concept: released\n")


def test_base_is_the_merge_base(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # main moves on with its own entry after `work` branched: only work's change is judged
    write(repo, "packages/fusion-concept/src/fusion/concept/core.py", "X = 2\n")
    commit(repo, "concept change without entry")
    git(repo, "checkout", "-q", "main")
    add_entry(repo, "fusion-concept", "- Done on main.")
    commit(repo, "main's entry")
    git(repo, "checkout", "-q", "work")
    status, out = run(repo, capsys)
    assert status == 1
    assert "fusion-concept changed" in out


def test_bad_base_is_a_usage_error(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(repo, capsys, base="no-such-branch")
    assert status == 2
    assert "changelog: git merge-base no-such-branch HEAD:" in out


def test_the_script_runs_from_the_command_line(repo: Path) -> None:
    write(repo, "packages/fusion-server/src/fusion/server/core.py", "X = 2\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "changelog_check.py"), "main"],
        cwd=repo / "packages",
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "fusion-server changed" in done.stderr
