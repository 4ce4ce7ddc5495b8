"""List every ``edf_fusion`` name the five services built on the older framework use.

Usage: ``python tools/edf_names.py [EDF_DIR]`` (default ``/tmp/edf``, where the
wheels of edf-carbon-server, edf-helium-server, edf-iron-server,
edf-iron-x-iris and edf-neon-server are unpacked, one folder each). Each of
their ``.py`` files is parsed with :mod:`ast`, never imported, and the names
are printed as ``module.name`` lines, sorted and unique:

- ``from edf_fusion.x import A, B`` gives ``edf_fusion.x.A`` and ``edf_fusion.x.B``;
- ``import edf_fusion.x as y`` gives ``edf_fusion.x.name`` for every ``y.name``
  the file reads (and ``import edf_fusion.x`` the same for ``edf_fusion.x.name``).

The output is kept as tests/docs/edf_fusion_names.txt, the list that
docs/migration.md's table must cover (tests/docs/test_migration_guide.py).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SERVICES", "edf_fusion_names", "names_in_source"]

#: The services ported from the older framework, as their unpacked folder names.
SERVICES = (
    "edf_carbon_server",
    "edf_helium_server",
    "edf_iron_server",
    "edf_iron_x_iris",
    "edf_neon_server",
)
_PACKAGE = "edf_fusion"


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for an attribute chain over a plain name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def names_in_source(source: str, filename: str = "<source>") -> set[str]:
    """The ``edf_fusion`` names one module's source imports or reads."""
    tree = ast.parse(source, filename=filename)
    names: set[str] = set()
    # How the file reads each imported edf_fusion module: `import a.b as y`
    # is read as `y.name`, `import a.b` as `a.b.name`.
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if _is_edf_fusion(node.module):
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_edf_fusion(alias.name):
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (read := _dotted(node.value)) in aliases:
            names.add(f"{aliases[read]}.{node.attr}")
    return names


def _is_edf_fusion(module: str) -> bool:
    return module == _PACKAGE or module.startswith(_PACKAGE + ".")


def _sources(edf_dir: Path) -> Iterator[Path]:
    for service in SERVICES:
        folder = edf_dir / service
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not found (unpack the {service} wheel there)")
        yield from sorted(folder.rglob("*.py"))


def edf_fusion_names(edf_dir: Path) -> list[str]:
    """Every ``edf_fusion`` name the services under ``edf_dir`` use, sorted."""
    names: set[str] = set()
    for path in _sources(edf_dir):
        names |= names_in_source(path.read_text(encoding="utf-8"), str(path))
    return sorted(names)


def main(argv: list[str]) -> int:
    edf_dir = Path(argv[0]) if argv else Path("/tmp/edf")
    try:
        names = edf_fusion_names(edf_dir)
    except (OSError, SyntaxError) as exc:
        print(f"edf_names: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{name}\n" for name in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
