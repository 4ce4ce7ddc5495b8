"""Configuration helpers: the TLS settings shape and ``${ENV_VAR}`` secrets."""

from __future__ import annotations

import difflib
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import msgspec

__all__ = [
    "ConfigError",
    "TLSConfig",
    "did_you_mean",
    "env_ref",
    "load_ssl_config",
    "resolve_env_refs",
    "tls_config",
]


class ConfigError(Exception):
    """A configuration value is invalid; the message names the key and the value."""


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------

_HEX_FINGERPRINT = re.compile(r"[0-9a-fA-F]{64}")


class TLSConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """How a Fusion TLS client (the client, webhooks, OIDC, LDAP) trusts its peer.

    The default verifies the peer's certificate and name against the system
    CAs. Where a configuration takes TLS settings, ``true``, ``false`` and a
    fingerprint string are short for ``{}``, ``{verify: false}`` and
    ``{fingerprint: ...}``.
    """

    verify: bool = True
    """Check the peer's certificate and name; false: no checks at all (test setups only)."""
    ca_file: str | None = None
    """PEM file of the CAs to trust instead of the system ones."""
    ca_path: str | None = None
    """Directory of hashed CA certificates (``c_rehash``) to trust instead of the system ones."""
    ca_data: str | None = None
    """PEM text of the CAs to trust instead of the system ones."""
    fingerprint: str | None = None
    """SHA-256 of the peer's certificate (64 hex digits, colons allowed): only that
    certificate is accepted, whoever signed it."""
    cert_file: str | None = None
    """PEM client certificate (with its key, unless ``key_file`` is given)."""
    key_file: str | None = None
    key_password: str | None = None
    """Password of an encrypted ``key_file``."""

    def __post_init__(self) -> None:
        # Shape only: files are read by ssl_context(), when the client is built.
        has_ca = bool(self.ca_file or self.ca_path or self.ca_data)
        if self.fingerprint is not None:
            if not _HEX_FINGERPRINT.fullmatch(self.fingerprint.strip().replace(":", "")):
                raise ValueError(
                    f"fingerprint: {self.fingerprint!r} is not a SHA-256 fingerprint"
                    " (64 hex digits, colons allowed)"
                )
            if has_ca or self.cert_file:
                raise ValueError(
                    "fingerprint: a pinned certificate is checked alone, without"
                    " ca_file/ca_path/ca_data or cert_file"
                )
        if not self.verify and (has_ca or self.fingerprint is not None):
            raise ValueError("verify: false checks nothing, drop the CAs or the fingerprint")
        if (self.key_file or self.key_password) and not self.cert_file:
            raise ValueError("key_file: needs cert_file")

    @property
    def fingerprint_bytes(self) -> bytes | None:
        """The pinned SHA-256 digest, or None."""
        if self.fingerprint is None:
            return None
        return bytes.fromhex(self.fingerprint.strip().replace(":", ""))

    def ssl_context(self, key: str = "ssl") -> ssl.SSLContext:
        """A client :class:`ssl.SSLContext` for these settings (the one LDAP uses).

        With ``verify: false`` or a fingerprint, the context checks nothing:
        the caller compares the fingerprint (aiohttp does, see
        :meth:`aiohttp_ssl`). Raises :class:`ConfigError` naming
        ``<key>.<field>`` when a file cannot be loaded.
        """
        try:
            context = ssl.create_default_context(
                cafile=self.ca_file, capath=self.ca_path, cadata=self.ca_data
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            field = "ca_file" if self.ca_file else "ca_path" if self.ca_path else "ca_data"
            shown = self.ca_file or self.ca_path or "<inline PEM>"
            raise ConfigError(
                f"{key}.{field}: cannot load CA certificates {shown!r}: {exc}"
            ) from None
        if not self.verify or self.fingerprint is not None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            try:
                context.load_cert_chain(self.cert_file, self.key_file, self.key_password)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{key}.cert_file: cannot load client certificate {self.cert_file!r}: {exc}"
                ) from None
        return context

    def aiohttp_ssl(self, key: str = "ssl") -> ssl.SSLContext | bool | aiohttp.Fingerprint:
        """What aiohttp's ``ssl=`` takes: ``False``, an :class:`aiohttp.Fingerprint`,
        ``True`` (system CAs) or :meth:`ssl_context`."""
        if not self.verify:
            return False
        digest = self.fingerprint_bytes
        if digest is not None:
            return aiohttp.Fingerprint(digest)
        if self == _DEFAULT_TLS:
            return True
        return self.ssl_context(key)


_DEFAULT_TLS = TLSConfig()


def tls_config(
    value: TLSConfig | bool | str | Mapping[str, Any] | None, key: str = "ssl"
) -> TLSConfig:
    """``value`` as a :class:`TLSConfig`: ``true``/``None`` (verify), ``false`` (no
    checks), a SHA-256 fingerprint string (pin), or a mapping of TLSConfig fields.

    ``key`` names the setting in :class:`ConfigError` messages.
    """
    if isinstance(value, TLSConfig):
        return value
    if value is None or value is True or value in ("true", "True"):
        return _DEFAULT_TLS
    if value is False or value in ("false", "False"):
        return TLSConfig(verify=False)
    if isinstance(value, str):
        value = {"fingerprint": value}
    if isinstance(value, Mapping):
        try:
            return msgspec.convert(value, TLSConfig)
        except msgspec.ValidationError as exc:
            text = str(exc)
            unknown = re.match(r"Object contains unknown field `([^`]*)`", text)
            if unknown:
                name = unknown.group(1)
                hint = did_you_mean(name, TLSConfig.__struct_fields__)
                raise ConfigError(f"{key}: unknown key {name!r}{hint}") from None
            raise ConfigError(f"{key}: {text}") from None
    raise ConfigError(
        f"{key}: expected true, false, a SHA-256 fingerprint or a mapping of"
        f" {'/'.join(TLSConfig.__struct_fields__)}, got {type(value).__name__} {value!r}"
    )


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'ca_file'?)`` when ``name`` is close to one of ``known``, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_ssl_config(
    value: TLSConfig | bool | str | Mapping[str, Any] | None, key: str = "ssl"
) -> ssl.SSLContext | bool | aiohttp.Fingerprint:
    """What aiohttp's ``ssl=`` accepts for a TLS setting: ``tls_config(value).aiohttp_ssl()``."""
    return tls_config(value, key).aiohttp_ssl(key)


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
