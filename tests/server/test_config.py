"""Loading the server configuration: file formats, errors naming the key, env references."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from fusion_testing.fixtures_server import cheap_password_hash, server_config_dict, write_config

from fusion.server import ConfigError, FusionServerConfig, load_config
from fusion.server.auth import BasicBackendConfig, api_key_digest


class TimelineSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_events: int = 1000


class TimelineConfig(FusionServerConfig, kw_only=True):
    timeline: TimelineSection = msgspec.field(default_factory=TimelineSection)


@pytest.mark.parametrize("suffix", [".yml", ".yaml", ".json", ".toml"])
def test_every_format_loads_the_same_config(tmp_path: Path, suffix: str) -> None:
    data = server_config_dict(tmp_path)
    path = write_config(tmp_path / f"fusion{suffix}", data)
    config = load_config(path)
    assert config.server.port == 0
    assert config.storage.data_dir == str(tmp_path)
    assert config.auth is not None
    backend = config.auth.backend_config
    assert isinstance(backend, BasicBackendConfig)
    assert [user.username for user in backend.users] == ["alice", "bob", "carol", "mallory"]
    assert config.auth.api_keys[0].digest == api_key_digest("robot-key-0123456789abcdef")
    assert config.info is not None
    assert config.info.api == "fusion-test"


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_text("")
    config = load_config(path)
    assert config == FusionServerConfig()
    assert config.shared_store.url == "memory://"
    assert config.auth is None
    assert config.case is None


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("server:\n  prot: 8080\n", "unknown key 'server.prot' (did you mean 'port'?)"),
        ("sever: {}\n", "unknown key 'sever'"),
        ("server:\n  port: http\n", "server.port: Expected `int`, got `str` (value 'http')"),
        ("server:\n  port: 70000\n", "server.port: Expected `int` <= 65535 (value 70000)"),
        (
            "server:\n  trusted_proxies: [10.0.0.0/8, proxy]\n",
            "server.trusted_proxies[1]: 'proxy' is not an IP address or network",
        ),
        ("shared_store:\n  url: ftp://x\n", "unsupported shared store URL 'ftp://x'"),
        (
            "auth:\n  backend: {type: kerberos}\n",
            "auth.backend.type: unknown backend type 'kerberos' (basic, ldap, oidc, keycloak)",
        ),
        ("auth:\n  backend: {users: []}\n", "auth.backend: Object missing required field `type`"),
        (
            "auth:\n  backend: {type: basic, users: [{username: a, password_hash: x}]}\n",
            "auth.backend.users[0].password_hash: Expected `str` matching regex",
        ),
        (
            "auth:\n  backend: {type: basic, users: [{username: a, password_hash: $argon2id$x}]}\n",
            "password_hash of 'a' is not a valid argon2id hash",
        ),
        (
            "auth:\n  backend: {type: basic, colour: blue}\n",
            "unknown key 'auth.backend.colour'",
        ),
        (
            "auth:\n  api_keys: [{username: r, key: short}]\n",
            "auth.api_keys[0]: api key: `key` must be at least 16 characters",
        ),
        (
            "auth:\n  api_keys: [{username: r}]\n",
            "give exactly one of `key` or `key_sha256`",
        ),
        (
            "auth:\n  api_keys: [{username: r, key_sha256: abc}]\n",
            "`key_sha256` must be 64 hexadecimal characters",
        ),
        ("auth:\n  session: {samesite: sometimes}\n", "auth.session.samesite"),
        ("auth:\n  throttle: {window: -1}\n", "auth.throttle.window: Expected `float` > 0.0"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("server: [\n", "cannot parse"),
    ],
)
def test_errors_name_the_key_and_value(tmp_path: Path, yaml: str, message: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(yaml)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = str(raised.value)
    assert text.startswith(str(path))
    assert message in text
    assert "\n" not in text


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.yml: No such file"):
        load_config(tmp_path / "missing.yml")
    path = tmp_path / "config.ini"
    path.write_text("[server]\n")
    with pytest.raises(ConfigError, match=r"unsupported configuration type '\.ini'"):
        load_config(path)


def test_secrets_come_from_environment_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBOT_KEY", "a-secret-robot-key-0001")
    monkeypatch.setenv("FUSION_PORT", "9123")
    path = tmp_path / "env.yml"
    path.write_text(
        "server:\n  port: ${FUSION_PORT}\n"
        "auth:\n  api_keys:\n    - {username: robot, key: '${ROBOT_KEY}'}\n"
    )
    config = load_config(path)
    assert config.server.port == 9123
    assert config.auth is not None
    assert config.auth.api_keys[0].digest == api_key_digest("a-secret-robot-key-0001")
    monkeypatch.delenv("ROBOT_KEY")
    with pytest.raises(
        ConfigError, match=r"auth\.api_keys\[0\]\.key: environment variable ROBOT_KEY"
    ):
        load_config(path)


def test_duplicate_keys_and_users_are_refused(tmp_path: Path) -> None:
    key = "the-same-key-0123456789"
    path = write_config(
        tmp_path / "dup.json",
        {
            "auth": {
                "api_keys": [{"username": "robot", "key": key}],
                "federation": {"key": key},
            }
        },
    )
    with pytest.raises(ConfigError, match="two API keys"):
        load_config(path)
    hashed = cheap_password_hash("x")
    user = {"username": "a", "password_hash": hashed}
    path = write_config(
        tmp_path / "users.json", {"auth": {"backend": {"type": "basic", "users": [user, user]}}}
    )
    with pytest.raises(ConfigError, match="a username appears twice"):
        load_config(path)


def test_services_extend_the_config_by_subclassing(tmp_path: Path) -> None:
    path = tmp_path / "timeline.yml"
    path.write_text("timeline:\n  max_events: 5\ncase: {}\n")
    config = load_config(path, TimelineConfig)
    assert config.timeline.max_events == 5
    assert config.case is not None
    path.write_text("timeline:\n  max_event: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'timeline\.max_event'"):
        load_config(path, TimelineConfig)
