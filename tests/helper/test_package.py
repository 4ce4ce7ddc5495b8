"""fusion.helper re-exports every public name, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fusion.helper


@pytest.mark.parametrize("name", fusion.helper.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(fusion.helper, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = fusion.helper.nope


def test_import_is_light() -> None:
    script = (
        "import sys, fusion.helper\n"
        "heavy = [m for m in ('redis', 'fusion.helper.zip', 'fusion.helper.flock', "
        "'fusion.helper._store_redis', 'aiofiles') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"
