"""LDAP authentication backend (ldap3, from the ``fusion-server[ldap]`` extra)."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import msgspec

from fusion.concept import AuthInfo, Identity
from fusion.helper.config import ConfigError, TLSConfig
from fusion.server.auth.backend import (
    BackendUnavailableError,
    FusionAuthBackend,
    FusionAuthBackendConfig,
    LoginBodyError,
    has_control_characters,
    normalise_username,
)

__all__ = ["LDAPBackend", "LDAPBackendConfig"]

_LOGGER = logging.getLogger("fusion.server.auth.ldap")
_T = TypeVar("_T")
# "(uid={username})" or "uid={username},ou=people,...": the attribute the login name is matched on.
_MATCHED_ATTRIBUTE = re.compile(r"(?:^|\()\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{username\}")

# Matches a user in any of the three common group shapes; {dn} and {username}
# are replaced by escaped values.
DEFAULT_GROUP_FILTER = (
    "(|(&(objectClass=groupOfNames)(member={dn}))"
    "(&(objectClass=groupOfUniqueNames)(uniqueMember={dn}))"
    "(&(objectClass=posixGroup)(memberUid={username})))"
)


class LDAPBackendConfig(FusionAuthBackendConfig, tag="ldap", kw_only=True):
    """``type: ldap``: users (and their groups) from a directory."""

    url: str
    """``ldap://host:port`` or ``ldaps://host:port`` (no trailing slash)."""
    start_tls: bool = False
    """Upgrade an ``ldap://`` connection with StartTLS before any bind."""
    tls: TLSConfig = msgspec.field(default_factory=TLSConfig)
    """How the directory's certificate is checked (ldaps:// and StartTLS): the
    shared TLS shape (``verify``, ``ca_file``, ``ca_path``, ``ca_data``,
    ``cert_file``/``key_file``); ``fingerprint`` is not supported here."""
    ca_file: str | None = None
    """Earlier spelling of ``tls.ca_file`` (folded into ``tls``)."""
    tls_verify: Literal["required", "optional", "none"] | None = None
    """Earlier spelling of ``tls.verify`` (none: false; required, optional: true)."""
    connect_timeout: float = 5.0
    receive_timeout: float = 10.0
    """Wait for one answer of the directory at most this long (rounded up to whole seconds)."""
    mode: Literal["search", "direct"] = "search"
    """search: a service account finds the user's DN; direct: ``user_dn_template``."""
    bind_dn: str | None = None
    """Service account for the user (and group) searches; anonymous when None."""
    bind_password: str | None = None
    user_base: str | None = None
    """Base of the user search (mode search)."""
    user_filter: str = "(uid={username})"
    """Filter of the user search; ``{username}`` is replaced by the escaped username."""
    user_scope: Literal["subtree", "level", "base"] = "subtree"
    user_dn_template: str | None = None
    """DN of the user (mode direct), e.g. ``uid={username},ou=people,dc=example,dc=org``."""
    username_attribute: str | None = None
    """Attribute of the entry that names the Identity, read back from the directory
    (a directory matches ``Bob``, `` bob`` and its full-width spelling as ``bob``: the
    Identity is always named by the entry's own value). When None: the attribute
    the login name is matched on in ``user_filter`` (search) or ``user_dn_template``
    (direct), e.g. ``uid``."""
    group_source: Literal["none", "member_of", "search"] = "member_of"
    member_of_attribute: str = "memberOf"
    group_base: str | None = None
    """Base of the group search (group_source search)."""
    group_filter: str = DEFAULT_GROUP_FILTER
    """``{dn}`` and ``{username}`` are replaced by escaped values."""
    group_scope: Literal["subtree", "level", "base"] = "subtree"
    group_name_attribute: str = "cn"
    allowed_groups: list[str] = msgspec.field(default_factory=list)
    """When not empty, only members of one of these groups may log in."""
    max_concurrency: int = 8
    """Logins talking to the directory at once (each holds a thread)."""

    def __post_init__(self) -> None:
        # Raised at decode time, so the config loader names the bad key.
        if self.ca_file is not None or self.tls_verify is not None:
            if self.tls != TLSConfig():
                raise ValueError(
                    "ca_file and tls_verify are the old spelling of tls: give only tls"
                )
            verify = self.tls_verify != "none"
            self.tls = TLSConfig(verify=verify, ca_file=self.ca_file if verify else None)
            self.ca_file = self.tls_verify = None
        if self.tls.fingerprint is not None:
            raise ValueError("tls.fingerprint: not supported by the ldap backend, use tls.ca_file")
        if not self.url.startswith(("ldap://", "ldaps://")) or self.url.endswith("/"):
            raise ValueError("url must be ldap://host[:port] or ldaps://host[:port], no path")
        if self.start_tls and self.url.startswith("ldaps://"):
            raise ValueError("start_tls applies to ldap:// urls, ldaps:// is already TLS")
        if self.mode == "search":
            if not self.user_base:
                raise ValueError("mode search needs user_base")
            if "{username}" not in self.user_filter:
                raise ValueError("user_filter must contain {username}")
            _check_filter_template(self.user_filter, "user_filter", username="x")
        elif not self.user_dn_template or "{username}" not in self.user_dn_template:
            raise ValueError("mode direct needs user_dn_template containing {username}")
        if (self.bind_dn is None) != (self.bind_password is None):
            raise ValueError("bind_dn and bind_password go together")
        if self.bind_password == "":
            raise ValueError("bind_password is empty (an empty password is an anonymous bind)")
        if self.group_source == "search":
            if not self.group_base:
                raise ValueError("group_source search needs group_base")
            _check_filter_template(self.group_filter, "group_filter", dn="x", username="x")
        if self.allowed_groups and self.group_source == "none":
            raise ValueError("allowed_groups needs a group_source")
        if self.connect_timeout <= 0 or self.receive_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.identity_attribute is None:
            raise ValueError(
                "username_attribute is needed: no `attribute={username}` in "
                + ("user_filter" if self.mode == "search" else "user_dn_template")
            )

    @property
    def identity_attribute(self) -> str | None:
        """The attribute that names the Identity (see ``username_attribute``)."""
        if self.username_attribute:
            return self.username_attribute
        template = self.user_filter if self.mode == "search" else self.user_dn_template
        found = _MATCHED_ATTRIBUTE.search(template or "")
        return found.group(1) if found else None

    def build(self) -> LDAPBackend:
        return LDAPBackend(self)


def _check_filter_template(template: str, name: str, **values: str) -> None:
    try:
        filled = template.format(**values)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"{name}: bad placeholder {error}") from None
    if not (filled.startswith("(") and filled.endswith(")")):
        raise ValueError(f"{name} must be an LDAP filter in parentheses")


_SCOPES = {"subtree": "SUBTREE", "level": "LEVEL", "base": "BASE"}


class LDAPBackend(FusionAuthBackend):
    """Search-then-bind or direct bind against a directory.

    Every ldap3 call is blocking: it runs on a small thread pool of the
    backend's own, so a slow directory never blocks the event loop nor
    starves the default executor that other parts of the server use.
    Connections are opened per login (the user bind always on a fresh one),
    so no connection is shared between threads.
    """

    type = "ldap"

    def __init__(self, config: LDAPBackendConfig) -> None:
        self.config = config
        self._executor: ThreadPoolExecutor | None = None

    async def startup(self) -> None:
        self._ensure_ready()

    async def shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _ensure_ready(self) -> ThreadPoolExecutor:
        if self._executor is None:
            _import_ldap3()
            self._executor = ThreadPoolExecutor(
                self.config.max_concurrency, thread_name_prefix="fusion-ldap"
            )
        return self._executor

    def _make_server(self) -> Any:
        # A new Server per connection: ldap3 marks an address unavailable after
        # one failure and a shared Server would refuse it after the directory
        # is back.
        import ldap3

        config = self.config
        tls = None
        if config.start_tls or config.url.startswith("ldaps://"):
            try:
                tls = _stdlib_tls_class()(config.tls.ssl_context("tls"))
            except ConfigError as error:
                raise BackendUnavailableError(f"LDAP TLS settings refused: {error}") from None
        return ldap3.Server(
            config.url,
            use_ssl=config.url.startswith("ldaps://"),
            tls=tls,
            connect_timeout=config.connect_timeout,
            get_info=ldap3.NONE,
        )

    async def login(self, data: dict[str, Any]) -> Identity | None:
        username = data.get("username")
        password = data.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise LoginBodyError('ldap login needs {"username": str, "password": str}')
        # An empty password is an anonymous (unauthenticated) bind that many
        # directories accept: refuse it before talking to the directory.
        if not username or not password or has_control_characters(username):
            return None
        executor = self._ensure_ready()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._login_blocking, username, password)

    def info(self) -> AuthInfo:
        return AuthInfo(type=self.type, parameters={"mode": self.config.mode})

    async def ready(self) -> None:
        """Opens a connection to the directory (with StartTLS when configured) and
        binds the service account when there is one, on the backend's threads."""
        executor = self._ensure_ready()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, self._guarded, self._check_directory)

    # -- blocking part, run in the executor ------------------------------------

    def _check_directory(self) -> None:
        config = self.config
        if config.bind_dn is not None:
            self._service_connection().unbind()
        else:
            self._connection(None, None).unbind()

    def _login_blocking(self, username: str, password: str) -> Identity | None:
        return self._guarded(self._authenticate, username, password)

    def _guarded(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` with ldap3's errors raised as :class:`BackendUnavailableError`."""
        from ldap3.core.exceptions import (
            LDAPCommunicationError,
            LDAPException,
            LDAPResponseTimeoutError,
            LDAPStartTLSError,
        )

        try:
            return call(*args)
        except (LDAPCommunicationError, LDAPResponseTimeoutError, LDAPStartTLSError) as error:
            raise BackendUnavailableError(
                f"LDAP directory {self.config.url} unreachable: {error}"
            ) from None
        except LDAPException as error:
            # Anything else ldap3 raises (TLS settings, protocol surprises) is
            # the directory or its configuration failing, not the caller.
            raise BackendUnavailableError(
                f"LDAP directory {self.config.url}: {type(error).__name__}: {error}"
            ) from None

    def _connection(self, user: str | None, password: str | None) -> Any:
        import ldap3

        connection = ldap3.Connection(
            self._make_server(),
            user=user,
            password=password,
            authentication=ldap3.SIMPLE if user is not None else ldap3.ANONYMOUS,
            # ldap3 packs it into SO_RCVTIMEO as whole seconds: a float fails.
            receive_timeout=math.ceil(self.config.receive_timeout),
            raise_exceptions=False,
            read_only=True,
            auto_referrals=False,
        )
        connection.open()
        if self.config.start_tls and not connection.start_tls():
            connection.unbind()
            raise BackendUnavailableError(f"LDAP directory {self.config.url}: StartTLS refused")
        return connection

    def _service_connection(self) -> Any:
        config = self.config
        connection = self._connection(config.bind_dn, config.bind_password)
        if not connection.bind():
            result = connection.result
            connection.unbind()
            raise BackendUnavailableError(
                f"LDAP directory {config.url}: service account bind refused "
                f"({result.get('description')})"
            )
        return connection

    def _authenticate(self, username: str, password: str) -> Identity | None:
        from ldap3.utils.conv import escape_filter_chars
        from ldap3.utils.dn import escape_rdn

        config = self.config
        attributes = self._wanted_attributes()
        service = None
        try:
            if config.mode == "search":
                service = self._service_connection()
                found = _search(
                    service,
                    config.user_base or "",
                    config.user_filter.format(username=escape_filter_chars(username)),
                    config.user_scope,
                    attributes,
                    # Two are enough to know the filter is ambiguous.
                    size_limit=2,
                )
                # Zero entries: unknown user. Several: an ambiguous filter,
                # never guess which person is logging in.
                if len(found) != 1:
                    return None
                user_dn, user_attributes = found[0]
            else:
                user_dn = (config.user_dn_template or "").format(username=escape_rdn(username))
                user_attributes = {}
            user = self._connection(user_dn, password)
            try:
                if not user.bind():
                    return None
                if config.mode == "direct" and attributes:
                    own = _search(user, user_dn, "(objectClass=*)", "base", attributes)
                    user_attributes = own[0][1] if own else {}
                if config.group_source == "search" and service is None and config.bind_dn:
                    service = self._service_connection()
                groups = self._groups(service or user, user_dn, username, user_attributes)
            finally:
                user.unbind()
        finally:
            if service is not None:
                service.unbind()
        if config.allowed_groups and not groups.intersection(config.allowed_groups):
            return None
        attribute = config.identity_attribute or ""
        values = user_attributes.get(attribute.lower()) or []
        # Of several values, the one the login name spells (uid: alice, uid: a.smith).
        wanted = normalise_username(username)
        name = next((value for value in values if normalise_username(value) == wanted), None)
        if name is None:
            name = values[0] if values else ""
        if not name or has_control_characters(name):
            _LOGGER.warning("LDAP entry %s has no usable %s value", user_dn, attribute)
            return None
        return Identity(username=name, groups=frozenset(groups))

    def _wanted_attributes(self) -> list[str]:
        config = self.config
        wanted = []
        if config.group_source == "member_of":
            wanted.append(config.member_of_attribute)
        wanted.append(config.identity_attribute or "")
        return wanted

    def _groups(
        self,
        connection: Any,
        user_dn: str,
        username: str,
        user_attributes: dict[str, list[str]],
    ) -> set[str]:
        from ldap3.utils.conv import escape_filter_chars

        config = self.config
        if config.group_source == "none":
            return set()
        if config.group_source == "member_of":
            return {
                name
                for dn in user_attributes.get(config.member_of_attribute.lower(), [])
                if (name := _first_rdn_value(dn))
            }
        group_filter = config.group_filter.format(
            dn=escape_filter_chars(user_dn), username=escape_filter_chars(username)
        )
        groups = set()
        for _, attributes in _search(
            connection,
            config.group_base or "",
            group_filter,
            config.group_scope,
            [config.group_name_attribute],
        ):
            groups.update(attributes.get(config.group_name_attribute.lower(), [])[:1])
        return groups


@functools.cache
def _stdlib_tls_class() -> type[Any]:
    """ldap3's ``Tls`` with the certificate checked by the standard library.

    ldap3 turns the SSL context's hostname check off and matches names itself,
    with a fallback that ignores IP addresses in the certificate on Python
    3.12+ (``ssl.match_hostname`` is gone): ``ldaps://10.0.0.5`` then fails with
    a valid certificate. Here the handshake verifies the chain and the name
    (DNS or IP), as every other TLS client of Fusion does, with the context
    :meth:`TLSConfig.ssl_context` built from the backend's ``tls`` settings.
    """
    import ldap3

    class StdlibTls(ldap3.Tls):  # type: ignore[misc]
        def __init__(self, context: ssl.SSLContext) -> None:
            super().__init__()
            self.context = context

        def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
            connection.socket = self.context.wrap_socket(
                connection.socket,
                server_side=False,
                do_handshake_on_connect=do_handshake,
                server_hostname=connection.server.host,
            )

    return StdlibTls


def _import_ldap3() -> None:
    try:
        import ldap3  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the ldap backend needs ldap3: pip install 'fusion-server[ldap]'"
        ) from error


def _search(
    connection: Any,
    base: str,
    search_filter: str,
    scope: str,
    attributes: list[str],
    size_limit: int = 0,
) -> list[tuple[str, dict[str, list[str]]]]:
    """Entries found as (dn, {lower-case attribute: [str values]}).

    Read from the raw response: ldap3 lists every requested attribute even
    when the entry does not have it.
    """
    import ldap3

    ok = connection.search(
        base,
        search_filter,
        search_scope=getattr(ldap3, _SCOPES[scope]),
        attributes=attributes or [ldap3.NO_ATTRIBUTES],
        size_limit=size_limit,
    )
    result = connection.result or {}
    # 4 sizeLimitExceeded still returns the entries read so far; 32
    # noSuchObject (the base does not exist) finds nobody.
    if not ok and result.get("result") not in (0, 4, 32):
        raise _operation_error(connection, result)
    entries = []
    for entry in connection.response or []:
        if entry.get("type") != "searchResEntry":
            continue
        raw: dict[str, list[bytes]] = entry.get("raw_attributes", {})
        values = {
            key.lower(): [value.decode("utf-8", errors="replace") for value in items]
            for key, items in raw.items()
            if items
        }
        entries.append((str(entry["dn"]), values))
    return entries


def _operation_error(connection: Any, result: dict[str, Any]) -> BackendUnavailableError:
    # busy, unavailable, insufficientAccessRights on a base... the directory or
    # its configuration fails: the operator must see why.
    return BackendUnavailableError(
        f"LDAP directory {connection.server.host}: search refused: "
        f"{result.get('description')} {result.get('message') or ''}".rstrip()
    )


def _first_rdn_value(dn: str) -> str:
    """``admins`` from ``cn=admins,ou=groups,...`` (RFC 4514 escapes undone)."""
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        components = parse_dn(dn)
    except LDAPInvalidDnError:  # a malformed memberOf value names no group
        return ""
    if not components:
        return ""
    return _unescape_dn_value(components[0][1])


def _unescape_dn_value(value: str) -> str:
    out = bytearray()
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            pair = value[index + 1 : index + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(int(pair, 16))
                index += 3
                continue
            out.extend(value[index + 1].encode())
            index += 2
            continue
        out.extend(char.encode())
        index += 1
    return out.decode("utf-8", errors="replace")
