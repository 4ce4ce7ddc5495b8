"""Release helper: bump one package's version and cut its CHANGELOG entries.

    python tools/release.py bump fusion-client minor       # or major, patch, 1.4.0
    python tools/release.py check-tag fusion-client-v1.3.0 # used by the release workflow

``bump`` rewrites ``packages/<name>/src/fusion/<short>/__about__.py`` and moves
the package's entries from the "Unreleased" part of CHANGELOG.md to a new
section ``## <name> <version> (<date>)``. A sibling is required with a
compatible-release pin (``fusion-concept~=0.1.0`` below 1.0, which admits
0.1.x only; ``fusion-concept~=1.2`` from 1.0, which admits 1.x from 1.2): when
the new version falls outside a dependent's pin, ``bump`` rewrites the pin in
that dependent's pyproject.toml to the new version's range and adds a line
saying so under the dependent's ``### <name>`` in "Unreleased" (it has to be
released too). ``check-tag`` exits non-zero unless the tag's version equals
the package's ``__about__.py``, and prints ``package=<name>`` for the workflow.
"Unreleased" may also hold a ``### workspace`` group (tooling, CI): it is
never released and stays where it is.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fusion-concept", "fusion-helper", "fusion-server", "fusion-client")
_VERSION_RE = re.compile(r'^__version__ = "(?P<version>[^"]+)"$', re.MULTILINE)
_SEMVER_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
# A requirement on a sibling: name, optional extras, specifier, optional marker.
_REQUIREMENT_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9._-]+)\s*(?P<extras>\[[^\]]*\])?\s*"
    r"(?P<spec>[^;]*?)\s*(?P<marker>;.*)?$"
)
_COMPATIBLE_RE = re.compile(r"^~=\s*(?P<release>\d+(?:\.\d+)+)$")


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


def compatible_pin(version: str) -> str:
    """The specifier dependents use: ``~=0.2.0`` (0.2.x) below 1.0, ``~=1.3`` from 1.0."""
    match = _SEMVER_RE.match(version)
    if match is None:
        raise ReleaseError(f"version {version!r} is not MAJOR.MINOR.PATCH")
    major, minor, _ = match.groups()
    return f"~={version}" if major == "0" else f"~={major}.{minor}"


def pin_admits(spec: str, version: str) -> bool:
    """Whether a ``~=`` specifier admits ``version`` (``~=0.1.0``: >=0.1.0, <0.2)."""
    match = _COMPATIBLE_RE.match(spec)
    if match is None:
        raise ReleaseError(f"pin {spec!r} is not a compatible release (~=X.Y or ~=X.Y.Z)")
    low = [int(part) for part in match["release"].split(".")]
    high = [*low[:-2], low[-2] + 1]
    release = [int(part) for part in version.split(".")]
    return low <= release + [0] * (len(low) - len(release)) and release[: len(high)] < high


@dataclass
class SiblingRequirement:
    """One requirement string of a package's pyproject.toml naming a sibling."""

    text: str
    name: str
    extras: str
    spec: str
    marker: str


def sibling_requirements(pyproject: str) -> list[SiblingRequirement]:
    """The requirements on Fusion packages in [project] dependencies and extras."""
    project = tomllib.loads(pyproject).get("project", {})
    texts = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        texts.extend(extra)
    found = []
    for text in texts:
        match = _REQUIREMENT_RE.match(text)
        if match is not None and match["name"] in PACKAGES:
            found.append(
                SiblingRequirement(
                    text, match["name"], match["extras"] or "", match["spec"], match["marker"] or ""
                )
            )
    return found


def pyproject_path(package: str, root: Path = ROOT) -> Path:
    about_path(package, root)  # validates the name
    return root / "packages" / package / "pyproject.toml"


def check_pins(root: Path = ROOT) -> list[str]:
    """Problems with the sibling pins of every package (empty when all are compatible pins
    admitting the sibling's current version)."""
    problems = []
    for package in PACKAGES:
        for requirement in sibling_requirements(pyproject_path(package, root).read_text()):
            current = read_version(requirement.name, root)
            try:
                admitted = pin_admits(requirement.spec, current)
            except ReleaseError as exc:
                problems.append(f"{package}: {requirement.text!r}: {exc}")
                continue
            if not admitted:
                problems.append(
                    f"{package}: {requirement.text!r} does not admit {requirement.name} {current}"
                )
    return problems


def add_unreleased_entry(text: str, group: str, entry: str) -> str:
    """Append ``entry`` at the end of ``### <group>`` under "## Unreleased" (made if absent)."""
    lines = text.splitlines()
    try:
        start = lines.index("## Unreleased")
    except ValueError as exc:
        raise ReleaseError("CHANGELOG.md has no '## Unreleased' section") from exc
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    if f"### {group}" in lines[start:end]:
        head = lines.index(f"### {group}", start, end)
        at = next((i for i in range(head + 1, end) if lines[i].startswith("### ")), end)
        floor, block = head + 1, [entry]
    else:
        at, floor, block = end, start + 1, ["", f"### {group}", entry]
    while at > floor and not lines[at - 1].strip():
        at -= 1
    if at < len(lines) and lines[at].strip():
        block.append("")
    return "\n".join(lines[:at] + block + lines[at:]).rstrip("\n") + "\n"


@dataclass
class Release:
    """What ``bump`` did: the new version, and the dependents whose pins it rewrote."""

    version: str
    pins: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


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


def bump(package: str, part: str, root: Path = ROOT, date: str | None = None) -> Release:
    """Bump ``package``, cut its changelog, and move dependents' pins that no longer admit it.

    Everything is computed before anything is written, so a refusal changes no file.
    """
    current = read_version(package, root)
    version = next_version(current, part)
    release = Release(version)
    changelog = root / "CHANGELOG.md"
    new_changelog = cut_changelog(
        changelog.read_text(), package, version, date or datetime.now(UTC).date().isoformat()
    )
    pyprojects: dict[Path, str] = {}
    for dependent in PACKAGES:
        path = pyproject_path(dependent, root)
        text = path.read_text()
        for requirement in sibling_requirements(text):
            if requirement.name != package or pin_admits(requirement.spec, version):
                continue
            pin = compatible_pin(version)
            new = f"{requirement.name}{requirement.extras}{pin}{requirement.marker}"
            text = text.replace(f'"{requirement.text}"', f'"{new}"')
            release.pins.setdefault(dependent, []).append((requirement.text, new))
            new_changelog = add_unreleased_entry(
                new_changelog,
                dependent,
                f"- Requires `{new}` (was `{requirement.text}`), for {package} {version}.",
            )
        if dependent in release.pins:
            pyprojects[path] = text
    about = about_path(package, root)
    about.write_text(_VERSION_RE.sub(f'__version__ = "{version}"', about.read_text()))
    for path, text in pyprojects.items():
        path.write_text(text)
    changelog.write_text(new_changelog)
    return release


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
    sub.add_parser("check-pins", help="check that sibling pins are ~= ranges admitting them")
    args = parser.parse_args(argv)
    try:
        if args.command == "bump":
            release = bump(args.package, args.part)
            print(f"{args.package} {release.version}")
            for dependent, pins in release.pins.items():
                for old, new in pins:
                    print(f"{dependent}: {old} -> {new}")
        elif args.command == "check-pins":
            problems = check_pins()
            for problem in problems:
                print(f"release: {problem}", file=sys.stderr)
            return 1 if problems else 0
        else:
            print(f"package={check_tag(args.tag)}")
    except (ReleaseError, OSError) as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
