"""``fusion-server migrate-config``: an older framework's (edf-fusion 3.x) service
configuration translated into Fusion's.

The translation is data: :data:`KEY_TRANSLATIONS` maps each key of the older
framework's sections to its Fusion key and, where the value changes shape, a
converter. Sections that are not the framework's (a service's own:
``connectors``, ``analyzer``, ``iris_client``...) are carried through
unchanged. Every key that is not translated is named with the reason: a
``cannot translate`` line needs the operator (the command exits 2), a
``dropped`` line only says why Fusion needs no such key, a ``note`` says what
to know about a translated one.

Password digests: the older ``basic`` backend hashed with argon2-cffi's
default ``PasswordHasher`` (argon2id, PHC string ``$argon2id$v=19$...``),
which is exactly what Fusion's ``basic`` backend verifies; the digests are
carried as ``password_hash`` unchanged and keep working. A digest of another
kind (argon2i, argon2d, anything hand-made) cannot be translated: re-hash that
user's password with ``fusion-server hash-password``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fusion.server.config import (
    ConfigError,
    FusionServerConfig,
    _struct_types_at,
    decode_config,
)

__all__ = [
    "FRAMEWORK_SECTIONS",
    "KEY_TRANSLATIONS",
    "Converter",
    "KeyTranslation",
    "MigrationResult",
    "migrate_config",
]

_ARGON2ID = re.compile(r"^\$argon2id\$")
_MIN_KEY_LENGTH = 16
_SAMESITE = {"strict": "Strict", "lax": "Lax", "none": "None"}


class _Absent:
    """A converter's answer: the key has no Fusion counterpart (omitted)."""


_ABSENT = _Absent()


@dataclass
class MigrationResult:
    """What :func:`migrate_config` made of an older configuration."""

    config: dict[str, Any]
    """The Fusion configuration (builtins, ready to encode as YAML)."""
    untranslated: list[tuple[str, str]] = field(default_factory=list)
    """``(old key, reason)`` of every key the operator must deal with (exit 2)."""
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """``(old key, reason)`` of keys Fusion needs no counterpart of."""
    notes: list[tuple[str, str]] = field(default_factory=list)
    """``(old key, note)``: translated, with something for the operator to know."""

    def cannot(self, key: str, reason: str) -> None:
        self.untranslated.append((key, reason))

    def drop(self, key: str, reason: str) -> None:
        self.dropped.append((key, reason))

    def note(self, key: str, text: str) -> None:
        self.notes.append((key, text))


Converter = Callable[[Any, MigrationResult, dict[str, Any]], Any]
"""``(old value, result, whole old config) -> new value`` (``_ABSENT``: no key)."""


def _same(value: Any, result: MigrationResult, old: dict[str, Any]) -> Any:
    return value


@dataclass(frozen=True)
class KeyTranslation:
    """One key of the older framework: its Fusion key (None: dropped, ``note`` says
    why) and the converter of its value."""

    old: str
    new: str | None
    convert: Converter = _same
    note: str = ""


# -- converters -----------------------------------------------------------------
def _tls(value: Any, key: str, result: MigrationResult) -> Any:
    """The older ``api_ssl`` (bool, hex SHA-256 string, ``{cafile, capath, cadata}``)."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, dict):
        names = {"cafile": "ca_file", "capath": "ca_path", "cadata": "ca_data"}
        for name in value.keys() - names.keys():
            result.cannot(f"{key}.{name}", "unknown TLS setting of the older framework")
        return {names[name]: item for name, item in value.items() if name in names and item}
    result.cannot(key, f"expected true, false, a fingerprint or a mapping, got {value!r}")
    return _ABSENT


def _event_ssl(value: Any, result: MigrationResult, old: dict[str, Any]) -> Any:
    return _tls(value, "event_api.api_ssl", result)


def _samesite(value: Any, result: MigrationResult, old: dict[str, Any]) -> Any:
    if value is None:
        return None  # the older cookie had no SameSite attribute
    found = _SAMESITE.get(str(value).lower())
    if found is None:
        result.cannot("auth_api.cookie.samesite", f"{value!r} is not Strict, Lax or None")
        return _ABSENT
    return found


def _secure(value: Any, result: MigrationResult, old: dict[str, Any]) -> Any:
    return _ABSENT if value is None else bool(value)


def _basic_users(basic: dict[str, Any], result: MigrationResult) -> list[dict[str, Any]]:
    # The older backend gave ``basic.groups`` to users listed without groups.
    default_groups = sorted(basic.get("groups") or [])
    users: list[dict[str, Any]] = []
    for index, user in enumerate(basic.get("users") or []):
        where = f"auth_api.backend.basic.users[{index}]"
        if not isinstance(user, dict) or not isinstance(user.get("username"), str):
            result.cannot(where, "a user needs a username")
            continue
        for name in user.keys() - {"username", "digest", "groups"}:
            result.cannot(f"{where}.{name}", "unknown key of a basic user")
        digest = user.get("digest")
        if not isinstance(digest, str) or not _ARGON2ID.match(digest):
            result.cannot(
                f"{where}.digest",
                f"user {user['username']!r}: not an argon2id digest ($argon2id$...): re-hash"
                " the password with `fusion-server hash-password` and set password_hash",
            )
            continue
        users.append(
            {
                "username": user["username"],
                "password_hash": digest,
                "groups": sorted(user.get("groups") or []) or default_groups,
            }
        )
    return users


def _keycloak(keycloak: dict[str, Any], result: MigrationResult) -> dict[str, Any]:
    """The older Keycloak backend as Fusion's ``keycloak`` backend on the same realm."""
    for name in keycloak.keys() - {
        "url",
        "client_id",
        "realm_name",
        "client_secret",
        "redirect_uri",
        "include_auth",
        "verify",
    }:
        result.cannot(f"auth_api.backend.keycloak.{name}", "unknown key of the keycloak backend")
    required = ("url", "realm_name", "client_id", "redirect_uri")
    missing = [name for name in required if not keycloak.get(name)]
    if missing:
        result.cannot("auth_api.backend.keycloak", f"missing {', '.join(missing)}")
        return {}
    url = str(keycloak["url"]).rstrip("/")
    # The older server URL was f"{url}/auth/" (include_auth, its default) or f"{url}/".
    backend: dict[str, Any] = {
        "type": "keycloak",
        "host": f"{url}/auth" if keycloak.get("include_auth", True) else url,
        "realm": keycloak["realm_name"],
        "client_id": keycloak["client_id"],
        "redirect_uri": keycloak["redirect_uri"],
    }
    if keycloak.get("client_secret"):
        backend["client_secret"] = keycloak["client_secret"]
    if not keycloak.get("verify", True):
        backend["tls"] = {"verify": False}
    result.note(
        "auth_api.backend.keycloak",
        f"translated to the keycloak backend on realm {keycloak['realm_name']!r} (issuer"
        f" {backend['host']}/realms/{keycloak['realm_name']}); its GET /api/auth/config"
        " answers type keycloak with the older front-ends' parameters; put the client"
        " secret in an environment variable (client_secret: ${KEYCLOAK_CLIENT_SECRET})",
    )
    return backend


_BACKENDS: dict[str, Callable[[dict[str, Any], MigrationResult], Any]] = {
    "basic": lambda backend, result: {
        "type": "basic",
        "users": _basic_users(backend.get("basic") or {}, result),
    },
    "keycloak": lambda backend, result: _keycloak(backend.get("keycloak") or {}, result),
}


def _backend(value: Any, result: MigrationResult, old: dict[str, Any]) -> Any:
    if not isinstance(value, dict):
        result.cannot("auth_api.backend", "expected a mapping")
        return _ABSENT
    for name in value.keys() - {"strategy", *_BACKENDS}:
        result.cannot(f"auth_api.backend.{name}", "unknown key of the auth backend")
    strategy = value.get("strategy")
    if not strategy:
        result.drop("auth_api.backend", "no strategy: no login backend (logins answer 501)")
        return _ABSENT
    build = _BACKENDS.get(str(strategy))
    if build is None:
        result.cannot("auth_api.backend.strategy", f"unknown strategy {strategy!r}")
        return _ABSENT
    for name in _BACKENDS.keys() - {strategy}:
        if any(item for item in (value.get(name) or {}).values()):
            result.drop(f"auth_api.backend.{name}", f"not used by strategy {strategy}")
    built = build(value, result)
    return built if built else _ABSENT


def _clients(value: Any, result: MigrationResult, old: dict[str, Any]) -> Any:
    api_keys: list[dict[str, Any]] = []
    for index, client in enumerate(value or []):
        where = f"auth_api.clients[{index}]"
        identity = client.get("identity") if isinstance(client, dict) else None
        if not isinstance(identity, dict) or not isinstance(identity.get("username"), str):
            result.cannot(where, "a client needs a key and an identity with a username")
            continue
        key = client.get("key")
        if not isinstance(key, str) or len(key) < _MIN_KEY_LENGTH:
            result.cannot(
                f"{where}.key",
                f"client {identity['username']!r}: Fusion refuses API keys shorter than"
                f" {_MIN_KEY_LENGTH} characters: issue a new key",
            )
            continue
        if identity.get("properties"):
            result.drop(f"{where}.identity.properties", "identities carry no properties")
        api_keys.append(
            {
                "username": identity["username"],
                "groups": sorted(identity.get("groups") or []),
                "key": key,
            }
        )
    return api_keys


def _iron_key(value: Any, result: MigrationResult, old: dict[str, Any]) -> Any:
    if not value:
        return _ABSENT  # null: no federation key
    if not isinstance(value, str) or len(value) < _MIN_KEY_LENGTH:
        result.cannot(
            "auth_api.iron_key",
            f"Fusion refuses federation keys shorter than {_MIN_KEY_LENGTH} characters:"
            " issue a new key",
        )
        return _ABSENT
    return {"key": value}


def _sorted_set(value: Any, result: MigrationResult, old: dict[str, Any]) -> Any:
    return sorted(value or [])


def _synchronizer(value: Any, result: MigrationResult, old: dict[str, Any]) -> Any:
    if not isinstance(value, dict):
        result.cannot("synchronizer", "expected a mapping")
        return _ABSENT
    for name in value.keys() - {"enabled", "directory"}:
        result.cannot(f"synchronizer.{name}", "unknown key of the synchronizer")
    if value.get("directory"):
        result.cannot(
            "synchronizer.directory",
            "Fusion's synchronizer has no directory: the service gives its SyncTree"
            " the directory in its own code (or its own config section)",
        )
    if not value.get("enabled", False):
        result.drop("synchronizer.enabled", "false: no synchronizer section")
        return _ABSENT
    return {}


KEY_TRANSLATIONS: tuple[KeyTranslation, ...] = (
    KeyTranslation("server.host", "server.host"),
    KeyTranslation("server.port", "server.port"),
    KeyTranslation("server.redis_url", "shared_store.url"),
    KeyTranslation("server.client_max_size", "server.max_body_size"),
    KeyTranslation("storage.directory", "storage.data_dir"),
    KeyTranslation("auth_api.backend", "auth.backend", _backend),
    KeyTranslation("auth_api.clients", "auth.api_keys", _clients),
    KeyTranslation("auth_api.iron_key", "auth.federation", _iron_key),
    KeyTranslation("auth_api.can_delete_acs", "auth.can_delete", _sorted_set),
    KeyTranslation("auth_api.cookie.name", "auth.session.cookie_name"),
    KeyTranslation("auth_api.cookie.domain", "auth.session.domain"),
    KeyTranslation("auth_api.cookie.path", "auth.session.path"),
    KeyTranslation("auth_api.cookie.max_age", "auth.session.max_age"),
    KeyTranslation("auth_api.cookie.secure", "auth.session.secure", _secure),
    KeyTranslation("auth_api.cookie.httponly", "auth.session.httponly"),
    KeyTranslation("auth_api.cookie.samesite", "auth.session.samesite", _samesite),
    KeyTranslation(
        "auth_api.cookie.secret_key",
        None,
        note="sessions live in the shared store: the cookie is an opaque id, nothing is"
        " signed or encrypted with a key",
    ),
    KeyTranslation("info_api.auth_required", "info.require_auth"),
    KeyTranslation("constant_api.auth_required", "constant.require_auth"),
    KeyTranslation("constant_api.constant_path", "constant.path"),
    KeyTranslation("event_api.webhook", "event.webhook"),
    KeyTranslation("event_api.api_key", "event.api_key"),
    KeyTranslation("event_api.api_ssl", "event.webhook_ssl", _event_ssl),
    KeyTranslation("event_api.timeout", "event.webhook_timeout"),
    KeyTranslation("download_api.max_pending_count", "download.max_pending"),
    KeyTranslation("synchronizer", "synchronizer", _synchronizer),
)
"""Every key of the older framework's sections and where it goes in Fusion's."""

FRAMEWORK_SECTIONS: dict[str, str] = {
    "server": "server",
    "storage": "storage",
    "auth_api": "auth",
    "case_api": "case",
    "info_api": "info",
    "event_api": "event",
    "constant_api": "constant",
    "download_api": "download",
    "synchronizer": "synchronizer",
}
"""The older framework's top-level sections -> Fusion's (every other section is a service's)."""

_BY_OLD = {translation.old: translation for translation in KEY_TRANSLATIONS}


def _set(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for name in parents:
        config = config.setdefault(name, {})
    config[last] = value


def _service_knows(config_type: type[FusionServerConfig] | None, path: str) -> bool:
    """Whether the service's configuration class has the key ``path`` (``storage.generaptor``)."""
    if config_type is None:
        return False
    parent, _, name = path.rpartition(".")
    structs = _struct_types_at(config_type, "." + parent if parent else "")
    return any(field.encode_name == name for struct in structs for field in struct.fields)


def _walk(
    value: Any,
    old_path: str,
    new_path: str,
    result: MigrationResult,
    old: dict[str, Any],
    config_type: type[FusionServerConfig] | None,
) -> None:
    translation = _BY_OLD.get(old_path)
    if translation is not None:
        if translation.new is None:
            result.drop(old_path, translation.note)
            return
        converted = translation.convert(value, result, old)
        if converted is not _ABSENT:
            _set(result.config, translation.new, converted)
        return
    if isinstance(value, dict) and any(key.startswith(old_path + ".") for key in _BY_OLD):
        for name, item in value.items():
            _walk(item, f"{old_path}.{name}", f"{new_path}.{name}", result, old, config_type)
        return
    if _service_knows(config_type, new_path):
        _set(result.config, new_path, value)  # a service's own key in a framework section
        return
    result.cannot(old_path, "unknown to the older framework and to Fusion")


def _derived(old: dict[str, Any], result: MigrationResult) -> None:
    """Fusion keys without an older counterpart whose value follows from the older file."""
    directory = (old.get("storage") or {}).get("directory")
    if "download_api" in old and directory:
        # The older download API served any path; Fusion's only files under its roots.
        _set(result.config, "download.roots", [str(directory)])
        result.note("download_api", f"download.roots set to the storage directory {directory!r}")
    if "info_api" in old:
        result.note(
            "info_api",
            "the older service named itself in its code (Info(api=..., version=...)):"
            " set info.api and info.version, which GET /api/info answers",
        )
    if "event_api" in old:
        result.note(
            "event_api",
            "set event.source to the service's name (its events' source); event.webhook_prefixes"
            " is empty: case webhooks are refused until it lists the allowed URL prefixes",
        )


def migrate_config(
    old: dict[str, Any], config_type: type[FusionServerConfig] | None = None
) -> MigrationResult:
    """Translate an older service configuration (its parsed file) into Fusion's.

    ``config_type`` is the service's configuration class (``--app``): its own
    keys inside framework sections are kept, and the result is validated with
    it; without it, the framework sections are validated with
    :class:`FusionServerConfig` and service sections carried unchecked.
    """
    result = MigrationResult(config={})
    for section, value in old.items():
        new_section = FRAMEWORK_SECTIONS.get(section)
        if new_section is None:
            if section in FusionServerConfig.__struct_fields__:
                result.cannot(section, "a service section with the name of a Fusion section")
                continue
            result.config[section] = value  # the service's own section, unchanged
            continue
        if section in _BY_OLD:
            _walk(value, section, new_section, result, old, config_type)
            continue
        if value is not None and not isinstance(value, dict):
            result.cannot(section, "expected a mapping")
            continue
        result.config.setdefault(new_section, {})
        for name, item in (value or {}).items():
            _walk(item, f"{section}.{name}", f"{new_section}.{name}", result, old, config_type)
    _derived(old, result)
    checked = result.config
    if config_type is None:
        config_type = FusionServerConfig
        framework = set(FusionServerConfig.__struct_fields__)
        checked = {key: value for key, value in checked.items() if key in framework}
    try:
        decode_config(checked, config_type, source="migrated configuration")
    except ConfigError as exc:
        result.cannot("(result)", f"does not validate: {exc}")
    return result
