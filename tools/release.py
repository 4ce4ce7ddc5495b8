"""Release helper: bump one package's version and cut its CHANGELOG entries.

    python tools/release.py bump fusion-client minor       # or major, patch, 1.4.0
    python tools/release.py check-tag fusion-client-v1.3.0 # used by the release workflow

``bump`` rewrites ``packages/<name>/src/fusion/<short>/__about__.py`` and moves
the package's entries from the "Unreleased" part of CHANGELOG.md to a new
section ``## <name> <version> (<date>)``. ``check-tag`` exits non-zero unless
the tag's version equals the package's ``__about__.py``, and prints
``package=<name>`` for the workflow.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fusion-concept", "fusion-helper", "fusion-server", "fusion-client")
_VERSION_RE = re.compile(r'^__version__ = "(?P<version>[^"]+)"$', re.MULTILINE)
_SEMVER_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


class ReleaseError(Exception):
    pass


def about_path(package: str, root: Path = ROOT) -> Path:
    if package not in PACKAGES:
        raise ReleaseError(f"unknown package {package!r}: one of {', '.join(PACKAGES)}")
    short = package.removeprefix("fusion-")
    return root / "packages" / package / "src" / "fusion" / short / "__about__.py"


def read_version(package: str, root: Path = ROOT) -> str:
    match = _VERSION_RE.search(about_path(package, root).read_text())
    if match is None:
        raise ReleaseError(f"no __version__ in {about_path(package, root)}")
    return match["version"]


def next_version(current: str, part: str) -> str:
    if _SEMVER_RE.match(part):
        return part
    match = _SEMVER_RE.match(current)
    if match is None:
        raise ReleaseError(f"current version {current!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch = (int(g) for g in match.groups())
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ReleaseError(f"bad version part {part!r}: major, minor, patch or X.Y.Z")


def cut_changelog(text: str, package: str, version: str, date: str) -> str:
    """Move ``### <package>`` out of "## Unreleased" into a new release section."""
    lines = text.splitlines()
    try:
        start = lines.index("## Unreleased")
    except ValueError as exc:
        raise ReleaseError("CHANGELOG.md has no '## Unreleased' section") from exc
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    try:
        head = lines.index(f"### {package}", start, end)
    except ValueError as exc:
        raise ReleaseError(f"no '### {package}' entries under '## Unreleased'") from exc
    tail = next((i for i in range(head + 1, end) if lines[i].startswith("### ")), end)
    entries = [line for line in lines[head + 1 : tail]]
    while entries and not entries[-1].strip():
        entries.pop()
    if not any(line.strip() for line in entries):
        raise ReleaseError(f"'### {package}' under '## Unreleased' is empty")
    unreleased = lines[start:head] + lines[tail:end]
    while len(unreleased) > 1 and not unreleased[-1].strip():
        unreleased.pop()
    section = ["", f"## {package} {version} ({date})", *entries, ""]
    return "\n".join(lines[:start] + unreleased + section + lines[end:]).rstrip("\n") + "\n"


def bump(package: str, part: str, root: Path = ROOT, date: str | None = None) -> str:
    current = read_version(package, root)
    version = next_version(current, part)
    changelog = root / "CHANGELOG.md"
    new_changelog = cut_changelog(
        changelog.read_text(), package, version, date or datetime.now(UTC).date().isoformat()
    )
    path = about_path(package, root)
    path.write_text(_VERSION_RE.sub(f'__version__ = "{version}"', path.read_text()))
    changelog.write_text(new_changelog)
    return version


def check_tag(tag: str, root: Path = ROOT) -> str:
    package, sep, version = tag.rpartition("-v")
    if not sep or package not in PACKAGES:
        raise ReleaseError(f"tag {tag!r} is not <package>-v<version> for a Fusion package")
    current = read_version(package, root)
    if version != current:
        raise ReleaseError(f"tag {tag!r} says {version} but {package} is {current}")
    return package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bump_parser = sub.add_parser("bump", help="bump a package and cut its changelog")
    bump_parser.add_argument("package", choices=PACKAGES)
    bump_parser.add_argument("part", help="major, minor, patch or an explicit X.Y.Z")
    tag_parser = sub.add_parser("check-tag", help="check a release tag against __about__.py")
    tag_parser.add_argument("tag")
    args = parser.parse_args(argv)
    try:
        if args.command == "bump":
            version = bump(args.package, args.part)
            print(f"{args.package} {version}")
        else:
            print(f"package={check_tag(args.tag)}")
    except (ReleaseError, OSError) as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
