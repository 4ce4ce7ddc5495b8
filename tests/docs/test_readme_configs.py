"""The READMEs' configuration examples are configurations the server accepts.

Every ```yaml block of README.md and packages/fusion-server/README.md whose
top level has a section of :class:`FusionServerConfig` is merged into the
complete test configuration (a fragment such as a lone ``auth:`` replaces the
keys it names) and decoded with :func:`decode_config`, the server's own
decoder, with the ``${...}`` variables it references set. A renamed or
removed key therefore fails here instead of rotting in the documentation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fusion_testing.fixtures_server import cheap_password_hash, server_config_dict

from fusion.server import FusionServerConfig, decode_config
from fusion.server.auth import api_key_digest

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", ROOT / "packages" / "fusion-server" / "README.md"]
SECTIONS = frozenset(FusionServerConfig.__struct_fields__)

_BLOCK_RE = re.compile(r"```yaml\n(.*?)```", re.DOTALL)
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
# What the READMEs elide, and a real value of the same kind for each.
_ELISIONS = {
    "$argon2id$v=19$...": cheap_password_hash("readme-password"),
    "<sha256 hex of the hub's key>": api_key_digest("readme-hub-key-0123456789"),
}


def _blocks() -> list[tuple[str, str]]:
    found = []
    for readme in READMES:
        for index, match in enumerate(_BLOCK_RE.finditer(readme.read_text())):
            found.append((f"{readme.relative_to(ROOT)}#yaml{index}", match.group(1)))
    return found


def _parse(text: str) -> Any:
    for elided, value in _ELISIONS.items():
        text = text.replace(elided, value)
    return msgspec.yaml.decode(text.encode())


def _config_blocks() -> list[tuple[str, str]]:
    return [
        (where, text)
        for where, text in _blocks()
        if isinstance(parsed := _parse(text), dict) and SECTIONS & parsed.keys()
    ]


BLOCKS = _config_blocks()


def test_readmes_document_every_backend() -> None:
    types = set()
    for _where, text in BLOCKS:
        auth = _parse(text).get("auth") or {}
        backend = auth.get("backend") or {}
        types.add(backend.get("type"))
    assert {"basic", "ldap", "oidc", "keycloak"} <= types, f"backends documented: {types}"
    assert any("event" in _parse(text) and "download" in _parse(text) for _w, text in BLOCKS)


@pytest.mark.parametrize(("where", "text"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_readme_configuration_decodes(
    where: str, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in set(_ENV_RE.findall(text)):
        # Distinct, long enough for an API key, never empty.
        monkeypatch.setenv(name, f"{name.lower()}-0123456789abcdef")
    block: dict[str, Any] = _parse(text)
    config = decode_config(server_config_dict(tmp_path, **block), FusionServerConfig, source=where)
    for section, value in block.items():
        decoded = getattr(config, section)
        if value is not None:
            assert decoded is not None, f"{where}: section {section!r} was dropped"
    if config.auth is not None and "auth" in block and "backend" in block["auth"]:
        assert config.auth.backend_config is not None
        assert config.auth.backend_config.__struct_config__.tag == block["auth"]["backend"]["type"]
