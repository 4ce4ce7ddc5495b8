"""fusion.server re-exports its public names, lazily: importing the package is cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import fusion.server


@pytest.mark.parametrize("name", fusion.server.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(fusion.server, name) is not None


def test_exports_are_the_objects_of_their_modules() -> None:
    exports = fusion.server._EXPORTS
    assert sorted([*exports, "__version__"]) == sorted(fusion.server.__all__)
    for name, module in exports.items():
        assert getattr(fusion.server, name) is getattr(
            importlib.import_module(f"fusion.server.{module}"), name
        )


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("FusionEventAPI", "fusion.server.event.api"),
        ("FusionEventConfig", "fusion.server.event.config"),
        ("FusionDownloadAPI", "fusion.server.download.api"),
        ("FusionDownloadConfig", "fusion.server.download.config"),
        ("FusionSynchronizer", "fusion.server.synchronizer.sync"),
        ("FusionSynchronizerConfig", "fusion.server.synchronizer.config"),
        ("receive_upload", "fusion.server.upload"),
    ],
)
def test_event_download_synchronizer_and_upload_are_exported(name: str, module: str) -> None:
    assert name in fusion.server.__all__
    assert getattr(fusion.server, name) is getattr(importlib.import_module(module), name)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = fusion.server.nope


def _fresh(script: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_import_pulls_in_no_heavy_module() -> None:
    out = _fresh(
        "import fusion.server; import sys; "
        "print('fusion.server.auth.ldap' in sys.modules, 'ldap3' in sys.modules, "
        "'jwt' in sys.modules)"
    )
    assert out == "False False False"


def test_import_loads_only_the_package_itself() -> None:
    out = _fresh(
        "import sys, fusion.server\n"
        "print(sorted(m for m in sys.modules if m.startswith('fusion.') "
        "or m in ('aiohttp', 'redis', 'argon2', 'msgspec')))"
    )
    assert out == "['fusion.server', 'fusion.server.__about__']"


def test_from_import_still_works_in_a_fresh_interpreter() -> None:
    out = _fresh(
        "from fusion.server import FusionServer, FusionServerConfig, load_config\n"
        "print(FusionServer.__module__, FusionServerConfig.__module__, load_config.__module__)"
    )
    assert out == "fusion.server.app fusion.server.config fusion.server.config"
