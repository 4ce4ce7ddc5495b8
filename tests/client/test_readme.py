"""The README's library example is a real program: run it against the loopback server."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.client.conftest import RunningServer

README = Path(__file__).resolve().parents[2] / "packages" / "fusion-client" / "README.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README lost its Python example"
    return str(blocks[0])


async def test_readme_example_runs(protocol_server: RunningServer, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_example())
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), protocol_server.url, "admin", protocol_server.password,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "fusion-test 9.9.9"
    assert lines[1] == "logged in as admin"
    assert lines[2].endswith(": phishing, two hosts")
    assert lines[3] == "as expected: 404 case not found"
    assert protocol_server.state.sessions == set()
