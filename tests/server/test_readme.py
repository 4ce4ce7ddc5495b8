"""The configuration example of packages/fusion-server/README.md is a valid configuration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fusion_testing.fixtures_server import cheap_password_hash

from fusion.server import load_config
from fusion.server.auth import BasicBackendConfig, api_key_digest

README = Path(__file__).resolve().parents[2] / "packages" / "fusion-server" / "README.md"


def test_readme_configuration_example_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = README.read_text()
    section = text.split("## Configuration", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None
    example = block.group(1)
    # The README elides the hash and the digest; put real ones in their place.
    example = example.replace("$argon2id$v=19$...", cheap_password_hash("alice"))
    example = example.replace("<sha256 hex of the hub's key>", api_key_digest("hub-key-0123456789"))
    monkeypatch.setenv("COLLECTOR_KEY", "collector-key-0123456789")
    path = tmp_path / "fusion.yml"
    path.write_text(example)
    config = load_config(path)
    assert config.shared_store.url == "redis://redis:6379/0"
    assert config.auth is not None
    assert isinstance(config.auth.backend_config, BasicBackendConfig)
    assert config.auth.api_keys[0].digest == api_key_digest("collector-key-0123456789")
    assert config.auth.session.secure is True
    assert config.case is not None
