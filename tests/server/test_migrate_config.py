"""``fusion-server migrate-config``: an older framework's (edf-fusion 3.x) service file
translated into Fusion's configuration.

The older files are written here in the older format (every framework section,
service sections beside them); the output must pass ``check-config`` (with the
service's class through ``--app``), a basic user migrated with its older
argon2id digest logs in over a real socket, and a migrated Keycloak backend
answers the older front-ends' ``GET /api/auth/config`` and logs a user in
against the test provider laid out as the realm.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from argon2 import PasswordHasher, Type
from fusion_testing.fixtures_cli import MainRunner
from fusion_testing.fixtures_server import (
    HTTPSessionFactory,
    ServerFactory,
    call,
    cheap_password_hash,
    login,
    write_config,
)
from fusion_testing.oidc_issuer import OIDCIssuer
from fusion_testing.tls import make_tls_files

from fusion.server import FusionServerConfig, decode_config
from fusion.server.auth.oidc import KeycloakBackendConfig
from fusion.server.cli import main
from fusion.server.migrate import FRAMEWORK_SECTIONS, KEY_TRANSLATIONS

SERVICE = """
from __future__ import annotations

import msgspec

from fusion.server import FusionServer, FusionServerConfig, StorageConfig


class Connector(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    api_url: str
    api_key: str
    api_ssl: bool | str = True


class GeneraptorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    cache: str
    config: str


class HeliumStorageConfig(StorageConfig, kw_only=True, forbid_unknown_fields=True):
    generaptor: GeneraptorConfig | None = None


class MigratedConfig(FusionServerConfig, kw_only=True, forbid_unknown_fields=True):
    storage: HeliumStorageConfig = msgspec.field(default_factory=HeliumStorageConfig)
    connectors: list[Connector] = msgspec.field(default_factory=list)
    analyzer: dict[str, dict[str, int | bool]] = msgspec.field(default_factory=dict)


def create(config: MigratedConfig) -> FusionServer:
    return FusionServer(config)
"""

ANALYST_PASSWORD = "older-analyst-password"
ROBOT_KEY = "older-robot-key-0123456789abcdef"
IRON_KEY = "older-iron-key-0123456789abcdef"
OLDER_VIEWER_DIGEST = PasswordHasher().hash("viewer-password")


def old_config(directory: Path) -> dict[str, Any]:
    """A complete older-format service file: every framework section and service sections."""
    ca_file = make_tls_files(directory).ca_file
    return {
        "server": {
            "host": "127.0.0.1",
            "port": 8443,
            "redis_url": "redis://127.0.0.1:6379/3",
            "client_max_size": 8 * 1024 * 1024,
        },
        "storage": {"directory": str(directory / "storage")},
        "auth_api": {
            "cookie": {
                "secret_key": "0123456789abcdef0123456789abcdef",
                "domain": "fusion.example.org",
                "max_age": 3600,
                "path": "/",
                "secure": True,
                "httponly": True,
                "samesite": "strict",
                "name": "HELIUM_SESSION",
            },
            "backend": {
                "strategy": "basic",
                "basic": {
                    "users": [
                        # The older backend's digest: argon2-cffi's default PasswordHasher
                        # (argon2id), here with test-cheap parameters.
                        {
                            "username": "analyst",
                            "digest": cheap_password_hash(ANALYST_PASSWORD),
                            "groups": ["analysts"],
                        },
                        # Made exactly as the older framework did: PasswordHasher() defaults.
                        {"username": "viewer", "digest": OLDER_VIEWER_DIGEST},
                    ],
                    "groups": ["readers"],
                },
                "keycloak": {},
            },
            "clients": [
                {
                    "key": ROBOT_KEY,
                    "identity": {"username": "neon", "groups": ["robots"], "properties": {}},
                }
            ],
            "iron_key": IRON_KEY,
            "can_delete_acs": ["admins", "analyst"],
        },
        "case_api": {},
        "info_api": {"auth_required": True},
        "event_api": {
            "webhook": "https://hooks.example.org/helium",
            "api_key": "notifier-key",
            "api_ssl": {"cafile": str(ca_file)},
            "timeout": 7.5,
        },
        "constant_api": {"auth_required": False, "constant_path": str(directory / "constant.yml")},
        "download_api": {"max_pending_count": 40},
        "synchronizer": {"enabled": True},
        # The service's own sections.
        "connectors": [
            {"name": "carbon", "api_url": "https://carbon.example.org", "api_key": "k" * 20}
        ],
        "analyzer": {"yara": {"enabled": True, "workers": 2}},
    }


@pytest.fixture
def service_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``migrated_service.py`` in the current directory (found by ``--app``)."""
    directory = tmp_path / "service"
    directory.mkdir()
    (directory / "migrated_service.py").write_text(SERVICE)
    importlib.invalidate_caches()
    monkeypatch.chdir(directory)
    try:
        yield directory
    finally:
        sys.modules.pop("migrated_service", None)


def _migrate(run_main: MainRunner, path: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    result = run_main(main, "migrate-config", *extra, str(path))
    return result.code, msgspec.yaml.decode(result.stdout.encode()), result.stderr


def test_every_section_migrates_and_passes_check_config(
    tmp_path: Path, service_dir: Path, run_main: MainRunner
) -> None:
    old = old_config(tmp_path)
    source = write_config(tmp_path / "helium.yml", old)
    code, new, stderr = _migrate(run_main, source, "--app", "migrated_service:create")
    assert code == 0, stderr
    assert "cannot translate" not in stderr
    # Keys Fusion needs no counterpart of are named, with why; and what to set by hand.
    assert "auth_api.cookie.secret_key: dropped: sessions live in the shared store" in stderr
    assert "info_api: note: the older service named itself in its code" in stderr
    assert "event_api: note: set event.source" in stderr
    assert new["server"] == {"host": "127.0.0.1", "port": 8443, "max_body_size": 8388608}
    assert new["shared_store"] == {"url": "redis://127.0.0.1:6379/3"}
    assert new["storage"] == {"data_dir": str(tmp_path / "storage")}
    auth = new["auth"]
    assert auth["backend"] == {
        "type": "basic",
        "users": [
            {
                "username": "analyst",
                "password_hash": old["auth_api"]["backend"]["basic"]["users"][0]["digest"],
                "groups": ["analysts"],
            },
            # basic.groups was the older default of users listed without groups.
            {
                "username": "viewer",
                "password_hash": old["auth_api"]["backend"]["basic"]["users"][1]["digest"],
                "groups": ["readers"],
            },
        ],
    }
    assert auth["api_keys"] == [{"username": "neon", "groups": ["robots"], "key": ROBOT_KEY}]
    assert auth["federation"] == {"key": IRON_KEY}
    assert auth["can_delete"] == ["admins", "analyst"]
    assert auth["session"] == {
        "cookie_name": "HELIUM_SESSION",
        "domain": "fusion.example.org",
        "max_age": 3600,
        "path": "/",
        "secure": True,
        "httponly": True,
        "samesite": "Strict",
    }
    assert new["case"] == {}
    assert new["info"] == {"require_auth": True}
    assert new["constant"] == {"require_auth": False, "path": str(tmp_path / "constant.yml")}
    assert new["event"] == {
        "webhook": "https://hooks.example.org/helium",
        "api_key": "notifier-key",
        "webhook_ssl": {"ca_file": str(tmp_path / "ca.pem")},  # written by make_tls_files
        "webhook_timeout": 7.5,
    }
    assert new["download"] == {"max_pending": 40, "roots": [str(tmp_path / "storage")]}
    assert new["synchronizer"] == {}
    # Service sections, unchanged.
    assert new["connectors"] == old["connectors"]
    assert new["analyzer"] == old["analyzer"]

    migrated = write_config(tmp_path / "fusion.yml", new)
    checked = run_main(main, "check-config", "--app", "migrated_service:create", str(migrated))
    assert checked.code == 0, checked.stderr
    assert "app migrated_service:create builds" in checked.stdout
    assert "service sections: connectors, analyzer" in checked.stdout


def test_without_app_service_sections_are_carried_and_the_framework_part_checks(
    tmp_path: Path, run_main: MainRunner
) -> None:
    old = old_config(tmp_path)
    code, new, stderr = _migrate(run_main, write_config(tmp_path / "old.json", old))
    assert code == 0, stderr
    assert new["connectors"] == old["connectors"]
    framework = {
        key: value for key, value in new.items() if key in FusionServerConfig.__struct_fields__
    }
    decode_config(framework, FusionServerConfig)  # raises when it does not validate
    checked = run_main(main, "check-config", str(write_config(tmp_path / "fw.yml", framework)))
    assert checked.code == 0, checked.stderr


def older_keycloak(url: str, secret: str, **extra: Any) -> dict[str, Any]:
    """An older ``auth_api.backend`` with strategy keycloak (the older KeycloakConfig keys)."""
    return {
        "strategy": "keycloak",
        "basic": {"users": [{"username": "x", "digest": cheap_password_hash("x")}]},
        "keycloak": {
            "url": url,
            "client_id": "fusion",
            "realm_name": "cert",
            "client_secret": secret,
            "redirect_uri": "http://127.0.0.1/login",
            **extra,
        },
    }


@pytest.mark.parametrize(
    ("include_auth", "host"),
    [
        ({}, "https://sso.example.org/auth"),  # the older default: include_auth true
        ({"include_auth": True}, "https://sso.example.org/auth"),
        ({"include_auth": False}, "https://sso.example.org"),
    ],
    ids=["default", "include-auth", "no-include-auth"],
)
def test_keycloak_strategy_becomes_the_keycloak_backend_of_the_realm(
    include_auth: dict[str, bool], host: str, tmp_path: Path, run_main: MainRunner
) -> None:
    old = old_config(tmp_path)
    del old["connectors"], old["analyzer"]
    old["auth_api"]["backend"] = older_keycloak(
        "https://sso.example.org/", "sso-secret", verify=False, **include_auth
    )
    code, new, stderr = _migrate(run_main, write_config(tmp_path / "old.yml", old))
    assert code == 0, stderr
    assert new["auth"]["backend"] == {
        "type": "keycloak",
        "host": host,
        "realm": "cert",
        "client_id": "fusion",
        "client_secret": "sso-secret",
        "redirect_uri": "http://127.0.0.1/login",
        "tls": {"verify": False},
    }
    assert "auth_api.backend.basic: dropped: not used by strategy keycloak" in stderr
    assert (
        "auth_api.backend.keycloak: note: translated to the keycloak backend on realm 'cert'"
        f" (issuer {host}/realms/cert)"
    ) in stderr
    assert "cannot translate" not in stderr
    checked = run_main(main, "check-config", str(write_config(tmp_path / "new.yml", new)))
    assert checked.code == 0, checked.stderr
    assert "auth backend keycloak" in checked.stdout
    config = decode_config(new, FusionServerConfig)
    backend = config.auth.backend if config.auth else None
    assert isinstance(backend, KeycloakBackendConfig)
    assert backend.issuer == f"{host}/realms/cert"
    assert backend.tls.verify is False


def test_keycloak_without_verify_keeps_certificate_checks(
    tmp_path: Path, run_main: MainRunner
) -> None:
    old = old_config(tmp_path)
    old["auth_api"]["backend"] = older_keycloak("https://sso.example.org", "s", verify=True)
    code, new, stderr = _migrate(run_main, write_config(tmp_path / "old.yml", old))
    assert code == 0, stderr
    assert "tls" not in new["auth"]["backend"]


def test_keycloak_missing_keys_cannot_be_translated(tmp_path: Path, run_main: MainRunner) -> None:
    old = old_config(tmp_path)
    old["auth_api"]["backend"] = older_keycloak("https://sso.example.org", "s", colour="blue")
    del old["auth_api"]["backend"]["keycloak"]["realm_name"]
    code, new, stderr = _migrate(run_main, write_config(tmp_path / "old.yml", old))
    assert code == 2
    assert "auth_api.backend.keycloak.colour: cannot translate: unknown key" in stderr
    assert "auth_api.backend.keycloak: cannot translate: missing realm_name" in stderr
    assert "backend" not in new["auth"]


async def _serve_migrated_keycloak(
    realm: OIDCIssuer,
    old_backend: dict[str, Any],
    tmp_path: Path,
    run_main: MainRunner,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    """Migrate an older keycloak config, serve it, and drive the older front-end's flow."""
    old = old_config(tmp_path)
    old["auth_api"]["backend"] = old_backend
    result = await run_main.in_thread(
        main, "migrate-config", str(write_config(tmp_path / "o.yml", old))
    )
    assert result.code == 0, result.stderr
    new = msgspec.yaml.decode(result.stdout.encode())
    framework = {
        key: value for key, value in new.items() if key in FusionServerConfig.__struct_fields__
    }
    framework["shared_store"] = {"url": "memory://"}
    framework["auth"]["session"]["secure"] = False
    framework["auth"]["session"]["domain"] = None
    running = await fusion_server(decode_config(framework, FusionServerConfig))
    session = http_sessions(running.url)
    status, body = await call(session, "GET", "/api/auth/config")
    assert status == 200, body
    # What the older server answered for this older config: host is its server_url.
    assert body["data"] == {
        "type": "keycloak",
        "parameters": {
            "host": realm.host + "/",
            "realm": "cert",
            "client": "fusion",
            "redirect_uri": "http://127.0.0.1/login",
        },
    }
    assert realm.client_secret not in str(body)
    # The issuer derived from the migrated host and realm is the realm's: a code logs in.
    code = realm.issue_code("alice", ["/cert/analysts"])
    status, body = await call(session, "POST", "/api/auth/login", json={"data": {"code": code}})
    assert status == 200, body
    assert body["data"] == {"username": "alice", "groups": ["/cert/analysts"]}
    status, body = await call(session, "GET", "/api/auth/is_logged")
    assert (status, body["data"]["username"]) == (200, "alice")


async def test_a_migrated_keycloak_config_answers_the_older_front_end(
    keycloak_realm: OIDCIssuer,
    tmp_path: Path,
    run_main: MainRunner,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    # Keycloak 17+ serves realms at the root: the older include_auth: false.
    url = f"http://127.0.0.1:{keycloak_realm.port}"
    old_backend = older_keycloak(url, keycloak_realm.client_secret, include_auth=False)
    await _serve_migrated_keycloak(
        keycloak_realm, old_backend, tmp_path, run_main, fusion_server, http_sessions
    )


async def test_a_migrated_keycloak_config_under_auth_answers_the_older_front_end(
    tmp_path: Path,
    run_main: MainRunner,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    # The older default (include_auth true): a Keycloak serving under /auth.
    realm = OIDCIssuer(realm="cert", base_path="/auth", redirect_uri="http://127.0.0.1/login")
    await realm.start()
    try:
        url = f"http://127.0.0.1:{realm.port}"
        old_backend = older_keycloak(url, realm.client_secret)
        await _serve_migrated_keycloak(
            realm, old_backend, tmp_path, run_main, fusion_server, http_sessions
        )
    finally:
        await realm.stop()


def test_untranslatable_keys_are_named_one_line_each_with_exit_2(
    tmp_path: Path, run_main: MainRunner
) -> None:
    old = old_config(tmp_path)
    users = old["auth_api"]["backend"]["basic"]["users"]
    argon2i = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.I)
    users.append({"username": "legacy", "digest": argon2i.hash("legacy-password")})
    old["auth_api"]["clients"].append({"key": "short", "identity": {"username": "old-robot"}})
    old["server"]["workers"] = 4
    old["storage"]["generaptor"] = {"cache": "/cache", "config": "/config"}
    old["synchronizer"]["directory"] = str(tmp_path / "sync")
    old["event"] = {"colour": "blue"}  # a service section named like a Fusion one
    code, new, stderr = _migrate(run_main, write_config(tmp_path / "old.yml", old))
    assert code == 2
    lines = [line for line in stderr.splitlines() if ": cannot translate: " in line]
    keys = [line.split(": ")[2] for line in lines]
    assert sorted(keys) == sorted(
        [
            "auth_api.backend.basic.users[2].digest",
            "auth_api.clients[1].key",
            "server.workers",
            "storage.generaptor",
            "synchronizer.directory",
            "event",
        ]
    ), stderr
    assert any("re-hash the password with `fusion-server hash-password`" in line for line in lines)
    # What could be translated is still printed, and valid.
    assert [user["username"] for user in new["auth"]["backend"]["users"]] == ["analyst", "viewer"]
    assert [key["username"] for key in new["auth"]["api_keys"]] == ["neon"]
    assert "workers" not in new["server"]
    framework = {
        key: value for key, value in new.items() if key in FusionServerConfig.__struct_fields__
    }
    decode_config(framework, FusionServerConfig)


def test_a_service_key_inside_a_framework_section_is_kept_with_its_app(
    tmp_path: Path, service_dir: Path, run_main: MainRunner
) -> None:
    old = old_config(tmp_path)
    old["storage"]["generaptor"] = {"cache": "/cache", "config": "/config"}
    old["storage"]["mistake"] = 1
    source = write_config(tmp_path / "old.yml", old)
    code, new, stderr = _migrate(run_main, source, "--app", "migrated_service:create")
    assert code == 2
    assert new["storage"]["generaptor"] == {"cache": "/cache", "config": "/config"}
    lines = [line for line in stderr.splitlines() if ": cannot translate: " in line]
    assert [line.split(": ")[2] for line in lines] == ["storage.mistake"], stderr


def test_a_service_section_the_app_refuses_is_named(
    tmp_path: Path, service_dir: Path, run_main: MainRunner
) -> None:
    old = old_config(tmp_path)
    old["connectors"][0]["colour"] = "blue"
    source = write_config(tmp_path / "old.yml", old)
    code, new, stderr = _migrate(run_main, source, "--app", "migrated_service:create")
    assert code == 2
    assert new["connectors"] == old["connectors"]
    assert "(result): cannot translate: does not validate:" in stderr
    assert "unknown key 'connectors[0].colour'" in stderr


def test_the_table_covers_the_issue_keys() -> None:
    named = {translation.old for translation in KEY_TRANSLATIONS}
    for key in (
        "server.redis_url",
        "server.client_max_size",
        "storage.directory",
        "auth_api.backend",
        "auth_api.clients",
        "auth_api.iron_key",
        "auth_api.can_delete_acs",
        "auth_api.cookie.secret_key",
        "synchronizer",
    ):
        assert key in named
    for section in ("case_api", "info_api", "event_api", "constant_api", "download_api"):
        assert section in FRAMEWORK_SECTIONS


async def test_a_migrated_basic_user_logs_in_with_the_older_password(
    tmp_path: Path,
    run_main: MainRunner,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    old = copy.deepcopy(old_config(tmp_path))
    result = await run_main.in_thread(
        main, "migrate-config", str(write_config(tmp_path / "o.yml", old))
    )
    assert result.code == 0, result.stderr
    new = msgspec.yaml.decode(result.stdout.encode())
    framework = {
        key: value for key, value in new.items() if key in FusionServerConfig.__struct_fields__
    }
    # The store does not matter to a login; the rest is the migrated file.
    framework["shared_store"] = {"url": "memory://"}
    framework["auth"]["session"]["secure"] = False
    framework["auth"]["session"]["domain"] = None
    running = await fusion_server(decode_config(framework, FusionServerConfig))
    session = http_sessions(running.url)
    status, body = await login(session, "analyst", "wrong-password")
    assert status == 400, body
    status, body = await login(session, "analyst", ANALYST_PASSWORD)
    assert status == 200, body
    assert body["data"] == {"username": "analyst", "groups": ["analysts"]}
    status, body = await call(session, "GET", "/api/auth/is_logged")
    assert status == 200
    assert body["data"]["username"] == "analyst"
    status, body = await login(http_sessions(running.url), "viewer", "viewer-password")
    assert status == 200
    assert body["data"]["groups"] == ["readers"]
    robot = http_sessions(running.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    status, body = await call(robot, "GET", "/api/auth/is_logged")
    assert status == 200
    assert body["data"] == {"username": "neon", "groups": ["robots"]}
