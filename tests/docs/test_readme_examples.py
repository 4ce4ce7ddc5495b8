"""The READMEs never lie: their Python examples run as they are written.

A ```python block runs unless the line before it is an HTML comment starting
with ``<!-- not run`` (which must say why, e.g. it needs a running server).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", *sorted(ROOT.glob("packages/*/README.md"))]
_BLOCK_RE = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for readme in READMES:
        text = readme.read_text()
        for index, match in enumerate(_BLOCK_RE.finditer(text)):
            if match["before"].strip().startswith("<!-- not run"):
                continue
            found.append((f"{readme.relative_to(ROOT)}#{index}", match["code"]))
    return found


BLOCKS = _blocks()


def test_readmes_have_examples() -> None:
    assert BLOCKS, "no runnable README example found"


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_readme_example_runs(where: str, code: str, tmp_path: Path) -> None:
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
