"""Fail when a package's code changed without a CHANGELOG.md entry under that package.

    python tools/changelog_check.py origin/main    # or any commit; run from the repository

The change is what the working tree has on top of its merge base with BASE: the
commits since then, uncommitted changes to tracked files and untracked files. For
each package whose ``packages/<name>/src/`` changed, the "## Unreleased" part of
CHANGELOG.md must have gained a line under ``### <name>`` (a line the base's did
not have), or the change must cut a release of it (a new ``## <name> <version>``
section, as ``tools/release.py bump`` writes). Groups under "## Unreleased" are
package names or ``workspace`` (tooling and CI, never released); another name
is refused. Exit status: 0 fine, 1 missing entries or an unknown group, 2 the
check could not run (bad BASE, not a git repository).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

WORKSPACE_GROUP = "workspace"
UNRELEASED = "## Unreleased"


class CheckError(Exception):
    pass


def git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise CheckError(f"git {' '.join(args)}: {detail.strip()}") from exc
    return done.stdout


def packages(repo: Path) -> list[str]:
    """The workspace's packages: the folders of packages/ with a pyproject.toml."""
    return sorted(p.name for p in (repo / "packages").glob("*") if (p / "pyproject.toml").is_file())


def unreleased_groups(text: str) -> dict[str, set[str]]:
    """The non-blank lines of each ``### <group>`` under "## Unreleased"."""
    groups: dict[str, set[str]] = {}
    current: set[str] | None = None
    inside = False
    for line in text.splitlines():
        if line.startswith("## "):
            inside, current = line.strip() == UNRELEASED, None
        elif inside and line.startswith("### "):
            current = groups.setdefault(line[4:].strip(), set())
        elif inside and current is not None and line.strip():
            current.add(line.rstrip())
    return groups


def release_headings(text: str) -> set[str]:
    """The ``## <package> <version> (<date>)`` lines."""
    return {line.strip() for line in text.splitlines() if line.startswith("## ")} - {UNRELEASED}


def check(repo: Path, base: str) -> tuple[list[str], list[str]]:
    """Problems, and one note per changed package that has its entry."""
    merge_base = git(repo, "merge-base", base, "HEAD").strip()
    changed = set(git(repo, "diff", "--name-only", merge_base, "--").splitlines())
    changed |= set(git(repo, "ls-files", "--others", "--exclude-standard").splitlines())
    names = packages(repo)
    touched = {
        name: sorted(f for f in changed if f.startswith(f"packages/{name}/src/")) for name in names
    }
    touched = {name: files for name, files in touched.items() if files}

    path = repo / "CHANGELOG.md"
    new = path.read_text() if path.is_file() else ""
    try:
        old = git(repo, "show", f"{merge_base}:CHANGELOG.md")
    except CheckError:
        old = ""  # no changelog at the base: every line is new
    new_groups, old_groups = unreleased_groups(new), unreleased_groups(old)
    released = {heading.split()[1] for heading in release_headings(new) - release_headings(old)}

    problems = [
        f"'### {group}' under '{UNRELEASED}' is not a package ({', '.join(names)}) "
        f"nor '{WORKSPACE_GROUP}'"
        for group in sorted(new_groups)
        if group not in names and group != WORKSPACE_GROUP
    ]
    notes = []
    for name, files in touched.items():
        gained = new_groups.get(name, set()) - old_groups.get(name, set())
        if gained:
            notes.append(f"{name}: {len(gained)} new line(s) under '### {name}'")
        elif name in released:
            notes.append(f"{name}: released")
        else:
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            problems.append(
                f"{name} changed ({shown}) but CHANGELOG.md gained no line under "
                f"'### {name}' in '{UNRELEASED}'"
            )
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="changelog_check", description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the branch or commit the change is made against")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the repository (cwd)")
    args = parser.parse_args(argv)
    try:
        repo = Path(git(args.repo, "rev-parse", "--show-toplevel").strip())
        problems, notes = check(repo, args.base)
    except (CheckError, OSError) as exc:
        print(f"changelog: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"changelog: {problem}", file=sys.stderr)
    for note in notes:
        print(f"changelog: {note}")
    if not problems and not notes:
        print(f"changelog: no package code changed since {args.base}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
