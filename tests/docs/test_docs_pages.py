"""docs/*.md never lie: every code block is run, decoded or found in the file it quotes.

- A block preceded by ``<!-- excerpt: PATH -->`` quotes PATH (relative to the
  repository): its text must appear in that file as it is, so a page that
  walks through ``examples/triage_service.py`` cannot drift from the file the
  suite runs end to end (tests/server/test_triage_tutorial.py); a common
  indentation may be removed (a method shown out of its class).
- Any other ```python block runs as a script (exit status 0).
- Any other ```yaml block holding sections of the server's configuration is
  decoded by the server's own decoder.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
from fusion_testing.fixtures_server import server_config_dict

from fusion.server import FusionServerConfig, decode_config

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").glob("*.md"))
_BLOCK_RE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>[a-z]+)\n(?P<code>.*?)\n```", re.DOTALL)
_EXCERPT_RE = re.compile(r"<!-- excerpt: (?P<path>\S+) -->")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECTIONS = frozenset(FusionServerConfig.__struct_fields__)


def _blocks() -> list[tuple[str, str, str | None, str]]:
    found = []
    for page in PAGES:
        for index, match in enumerate(_BLOCK_RE.finditer(page.read_text())):
            excerpt = _EXCERPT_RE.fullmatch(match["before"].strip())
            where = f"{page.relative_to(ROOT)}#{index}"
            found.append(
                (where, match["lang"], excerpt["path"] if excerpt else None, match["code"])
            )
    return found


BLOCKS = _blocks()
EXCERPTS = [block for block in BLOCKS if block[2] is not None]
SCRIPTS = [block for block in BLOCKS if block[2] is None and block[1] == "python"]
CONFIGS = [block for block in BLOCKS if block[2] is None and block[1] == "yaml"]


def test_the_pages_exist_and_hold_code() -> None:
    names = {page.name for page in PAGES}
    assert {"tutorial.md", "extending.md"} <= names, names
    assert EXCERPTS, "the tutorial quotes its example"
    assert SCRIPTS, "the reference runs its examples"


@pytest.mark.parametrize(("where", "lang", "path", "code"), EXCERPTS, ids=[b[0] for b in EXCERPTS])
def test_an_excerpt_is_in_the_file_it_quotes(where: str, lang: str, path: str, code: str) -> None:
    # Lines of the file as they are, but for a common indentation (a method
    # quoted out of its class is shown, and formatted, at the left margin).
    lines = (ROOT / path).read_text().split("\n")
    wanted = code.split("\n")
    windows = (
        textwrap.dedent("\n".join(lines[start : start + len(wanted)]))
        for start in range(len(lines) - len(wanted) + 1)
    )
    assert code in windows, f"{where}: this {lang} block is not in {path} as written"


@pytest.mark.parametrize(("where", "lang", "path", "code"), SCRIPTS, ids=[b[0] for b in SCRIPTS])
def test_a_python_block_runs(where: str, lang: str, path: None, code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code + "\n")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize(("where", "lang", "path", "code"), CONFIGS, ids=[b[0] for b in CONFIGS])
def test_a_configuration_block_decodes(
    where: str, lang: str, path: None, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in set(_ENV_RE.findall(code)):  # ${NAME} without a default: the secret's place
        monkeypatch.setenv(name, f"{name.lower()}-0123456789abcdef")
    block = msgspec.yaml.decode(code.encode())
    assert isinstance(block, dict)
    assert SECTIONS & block.keys(), f"{where}: not a configuration"
    decode_config(server_config_dict(tmp_path, **block), FusionServerConfig, source=where)
