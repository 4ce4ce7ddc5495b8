"""The ``fusion-client`` command's profiles: one service (its URLs, key, case type) by name.

The command's config file is ``$XDG_CONFIG_HOME/fusion-client/config.toml``::

    default = "triage"

    [profiles.triage]
    urls = ["https://triage-1:8443", "https://triage-2:8443"]
    case_type = "triage_cases:TriageCase"

A profile's session is the service's, not one URL's: it is kept in one file
per profile and sent to every URL of the profile (the replicas), through a
:class:`~fusion.client.FusionCookieJar`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import msgspec
from yarl import URL

__all__ = [
    "Profile",
    "ProfileError",
    "ProfileFile",
    "config_dir",
    "load_profiles",
    "load_session",
    "profile_session_file",
    "save_profiles",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ProfileError(Exception):
    """A profile that cannot be used (unknown name, unreadable config file...)."""


class Profile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One service as the command reaches it."""

    urls: list[str]
    """The service's URLs: the first is used unless ``--url`` picks another one."""
    api_key: str | None = None
    """Robot API key sent as ``X-Fusion-API-Token`` (instead of a login session)."""
    case_type: str | None = None
    """``package.module:Class``: the service's Case subclass, as ``--case-type``."""
    ca: str | None = None
    """PEM file of the CA certificates to trust (as ``--ca``)."""
    fingerprint: str | None = None
    """Hex SHA-256 of the pinned server certificate (as ``--fingerprint``)."""
    insecure: bool = False
    """Do not verify TLS certificates (as ``--insecure``)."""


class ProfileFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The command's config file."""

    default: str | None = None
    """The profile used when no ``--profile``/``$FUSION_PROFILE`` nor ``--url``/``$FUSION_URL``."""
    profiles: dict[str, Profile] = msgspec.field(default_factory=dict)


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/fusion-client`` (``~/.config/fusion-client`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fusion-client"


def config_file() -> Path:
    return config_dir() / "config.toml"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ProfileError(
            f"invalid profile name {name!r}: use letters, digits, '.', '_' or '-' (64 at most)"
        )
    return name


def normalised_url(url: str) -> str:
    return str(URL(url.rstrip("/") + "/"))


def load_profiles() -> ProfileFile:
    """The config file's profiles (none when the file does not exist)."""
    path = config_file()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ProfileFile()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"cannot read {path}: {exc}") from None
    try:
        loaded = msgspec.convert(data, ProfileFile)
    except msgspec.ValidationError as exc:
        raise ProfileError(f"invalid {path}: {exc}") from None
    for name, profile in loaded.profiles.items():
        check_name(name)
        if not profile.urls:
            raise ProfileError(f"invalid {path}: profile {name!r} has no urls")
    return loaded


def _toml_value(value: Any) -> str:
    # JSON strings are TOML basic strings (same escapes); lists of them too.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml(config: ProfileFile) -> str:
    lines: list[str] = []
    if config.default is not None:
        lines += [f"default = {_toml_value(config.default)}", ""]
    for name in sorted(config.profiles):
        lines.append(f"[profiles.{_toml_value(name)}]")
        values = msgspec.to_builtins(config.profiles[name])
        for key, value in values.items():
            if value is not None and value is not False:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def private_dir(path: Path) -> None:
    """Create ``path`` (and the config dir) readable by the user only: they hold credentials."""
    for directory in (config_dir(), path):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)


def save_profiles(config: ProfileFile) -> Path:
    """Write the config file (mode 0600, atomically: it may hold API keys)."""
    path = config_file()
    private_dir(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=".config-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(_toml(config))
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def profile_session_file(name: str) -> Path:
    """The file keeping a profile's session cookie (one per profile, whatever the URL)."""
    return config_dir() / "sessions" / f"profile-{check_name(name)}.json"


def load_session(path: Path, urls: list[str]) -> list[tuple[str, str, str, str]]:
    """The cookies saved in ``path`` by a client of one of ``urls``: (url, name, value, path).

    A file written for another service (a URL not in ``urls``) gives nothing.
    """
    try:
        stored = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return []  # unreadable: as if logged out, the next login rewrites it
    service = {normalised_url(url) for url in urls}
    if not isinstance(stored, dict) or stored.get("api_url") not in service:
        return []
    found: list[tuple[str, str, str, str]] = []
    for item in stored.get("cookies", []):
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            found.append(
                (
                    stored["api_url"],
                    item["name"],
                    str(item.get("value", "")),
                    str(item.get("path") or "/"),
                )
            )
    return found
