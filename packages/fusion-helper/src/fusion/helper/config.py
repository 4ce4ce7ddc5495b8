"""Configuration helpers: TLS verification settings and ``${ENV_VAR}`` secrets."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp

__all__ = ["ConfigError", "env_ref", "load_ssl_config", "resolve_env_refs"]


class ConfigError(Exception):
    """A configuration value is invalid; the message names the key and the value."""


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------

_SSL_KEYS = frozenset({"cafile", "capath", "cadata", "certfile", "keyfile", "password"})
_HEX_FINGERPRINT = re.compile(r"[0-9a-fA-F]{64}")


def load_ssl_config(
    value: bool | str | Mapping[str, Any] | None, key: str = "ssl"
) -> ssl.SSLContext | bool | aiohttp.Fingerprint:
    """Turn a configuration value into what aiohttp's ``ssl=`` accepts.

    - ``True`` or ``None``: verify the peer against the system CAs;
    - ``False``: no verification (test setups only);
    - a hex SHA-256 certificate fingerprint, colons allowed: pin that certificate;
    - a mapping with ``cafile``, ``capath`` and/or ``cadata`` (plus optional
      ``certfile``/``keyfile``/``password`` for a client certificate): an SSLContext
      verifying against those CAs.

    ``key`` names the setting in error messages.
    """
    if value is None or value is True:
        return True
    if value is False:
        return False
    if isinstance(value, str):
        digits = value.strip().replace(":", "")
        if _HEX_FINGERPRINT.fullmatch(digits):
            return aiohttp.Fingerprint(bytes.fromhex(digits))
        raise ConfigError(
            f"{key}: {value!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed);"
            " use true, false, a fingerprint or a mapping with cafile/capath/cadata"
        )
    if isinstance(value, Mapping):
        return _ssl_context(value, key)
    raise ConfigError(
        f"{key}: expected true, false, a SHA-256 fingerprint or a mapping with"
        f" cafile/capath/cadata, got {type(value).__name__} {value!r}"
    )


def _ssl_context(value: Mapping[str, Any], key: str) -> ssl.SSLContext:
    unknown = sorted(set(value) - _SSL_KEYS)
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; allowed: {sorted(_SSL_KEYS)}")
    for name, item in value.items():
        if item is not None and not isinstance(item, str):
            raise ConfigError(f"{key}.{name}: expected a string, got {type(item).__name__}")
    cafile, capath, cadata = value.get("cafile"), value.get("capath"), value.get("cadata")
    if not (cafile or capath or cadata):
        raise ConfigError(f"{key}: a mapping needs at least one of cafile, capath, cadata")
    try:
        context = ssl.create_default_context(cafile=cafile, capath=capath, cadata=cadata)
    except (OSError, ssl.SSLError, ValueError) as exc:
        source = "cafile" if cafile else "capath" if capath else "cadata"
        shown = cafile or capath or "<inline PEM>"
        raise ConfigError(f"{key}.{source}: cannot load CA certificates {shown!r}: {exc}") from exc
    certfile = value.get("certfile")
    if value.get("keyfile") and not certfile:
        raise ConfigError(f"{key}.keyfile: needs {key}.certfile")
    if certfile:
        try:
            context.load_cert_chain(certfile, value.get("keyfile"), value.get("password"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{key}.certfile: cannot load client certificate {certfile!r}: {exc}"
            ) from exc
    return context


# ---------------------------------------------------------------------------
# environment references
# ---------------------------------------------------------------------------

# "$${...}" is an escaped literal; "${NAME}" or "${NAME:-default}" a reference.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_ref(value: str, environ: Mapping[str, str] | None = None, *, key: str | None = None) -> str:
    """``value`` with each ``${NAME}`` replaced by the environment variable ``NAME``.

    ``${NAME:-default}`` falls back to ``default``; ``$${`` is a literal ``${``.
    A missing variable or a malformed reference raises :class:`ConfigError` naming
    the variable (and ``key``, the configuration key, when given).
    """
    if "${" not in value:
        return value
    env = os.environ if environ is None else environ
    where = f"{key}: " if key else ""

    def replace(match: re.Match[str]) -> str:
        if match.group() == "$${":
            return "${"
        inner = match.group(1)
        if inner is None:
            raise ConfigError(f"{where}unterminated environment reference in {value!r}")
        name, has_default, default = inner.partition(":-")
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}invalid environment variable name {name!r} in ${{...}}")
        found = env.get(name)
        if found is not None:
            return found
        if has_default:
            return default
        raise ConfigError(f"{where}environment variable {name} is not set")

    return _REFERENCE.sub(replace, value)


def resolve_env_refs(value: Any, environ: Mapping[str, str] | None = None, *, key: str = "") -> Any:
    """A copy of a loaded configuration with ``${NAME}`` resolved in every string.

    Walks dicts (values only, keys are left alone) and lists; errors name the
    dotted key path (``auth.ldap.password``) and the variable.
    """
    if isinstance(value, str):
        return env_ref(value, environ, key=key or None)
    if isinstance(value, Mapping):
        return {
            name: resolve_env_refs(item, environ, key=f"{key}.{name}" if key else str(name))
            for name, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(
            resolve_env_refs(item, environ, key=f"{key}[{index}]")
            for index, item in enumerate(value)
        )
    return value
