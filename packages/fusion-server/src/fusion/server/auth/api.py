"""FusionAuthAPI: login, sessions, API keys, the federation key, authorization and audit."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from fusion.concept import Case, Identity
from fusion.helper.aiohttp import (
    FusionHTTPError,
    IPNetwork,
    client_ip,
    json_response,
    read_json,
)
from fusion.helper.store import SharedStore
from fusion.helper.tracing import AUDIT_LOGGER, trace_user_op
from fusion.server.appkeys import AUTH, CONFIG, STORAGE, STORE
from fusion.server.auth.access import Access, Action, can_access_case, can_delete
from fusion.server.auth.backend import (
    BackendUnavailableError,
    FusionAuthBackend,
    LoginBodyError,
)
from fusion.server.auth.config import FusionAuthAPIConfig
from fusion.server.auth.session import SessionManager
from fusion.server.storage import FusionStorage

__all__ = ["FusionAuthAPI"]

_LOGGER = logging.getLogger("fusion.server.auth")

_IDENTITY_KEY = web.RequestKey("fusion_identity", Identity)
_API_TOKEN_HEADER = "X-Fusion-API-Token"  # noqa: S105 - a header name
_DEFAULT_MAX_BODY = 64 * 1024
# The longest tried username an audit record keeps (usernames are attacker-chosen).
_AUDIT_NAME_MAX = 128
# Methods a cross-site page can send; a cookie alone must not carry their JSON bodies.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Properties kept on the Identity of a request (never serialised).
_SOURCE = "source"
_SESSION_ID = "session_id"
_FEDERATION = "federation"
_RECORDED = "recorded"


def _capped(name: str) -> str:
    return name if len(name) <= _AUDIT_NAME_MAX else name[:_AUDIT_NAME_MAX] + "..."


def _mark_session(identity: Identity, session_id: str) -> None:
    properties = identity.properties
    properties[_SOURCE] = "session"
    properties[_SESSION_ID] = session_id


class FusionAuthAPI:
    """The auth routes of PROTOCOL.md and the authorization every other API calls.

    A service customises decisions by overriding :meth:`authorize_impl`.
    """

    def __init__(
        self,
        config: FusionAuthAPIConfig,
        backend: FusionAuthBackend | None = None,
        *,
        trusted_proxies: Sequence[IPNetwork] = (),
        max_body_size: int = _DEFAULT_MAX_BODY,
    ) -> None:
        self.config = config
        if backend is None and config.backend_config is not None:
            backend = config.backend_config.build()
        self.backend = backend
        self.trusted_proxies = tuple(trusted_proxies)
        self.max_body_size = max_body_size
        self._keys: dict[str, Identity] = {}
        for api_key in config.api_keys:
            self._keys[api_key.digest] = Identity(
                username=api_key.username, groups=set(api_key.groups)
            )
        if config.federation is not None:
            federation = Identity(
                username=config.federation.username, groups=set(config.federation.groups)
            )
            federation.properties[_FEDERATION] = True
            self._keys[config.federation.digest] = federation
        for identity in self._keys.values():
            identity.properties[_SOURCE] = "key"
        self._can_delete = frozenset(config.can_delete)
        self._cookie_name = config.session.cookie_name
        self._cookie_prefix = self._cookie_name + "="
        # The hook costs a coroutine per request: only awaited when overridden.
        self._has_authorize_impl = type(self).authorize_impl is not FusionAuthAPI.authorize_impl
        # username -> groups already written to storage by this process, so that
        # recording the identities seen is not a storage write per request.
        self._seen: dict[str, frozenset[str]] = {}
        self._store: SharedStore | None = None
        self._storage: FusionStorage | None = None
        self._sessions: SessionManager | None = None

    # -- wiring ---------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        """Register the auth routes and the startup/shutdown of the backend."""
        app[AUTH] = self
        if CONFIG in app and not self.trusted_proxies:
            self.trusted_proxies = app[CONFIG].server.trusted_proxy_networks
        app.router.add_post("/api/auth/login", self.login)
        app.router.add_get("/api/auth/logout", self.logout)
        app.router.add_get("/api/auth/is_logged", self.is_logged)
        app.router.add_get("/api/auth/config", self.auth_config)
        app.router.add_get("/api/auth/identities", self.identities)
        app.cleanup_ctx.append(self._lifecycle)

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self._store = app[STORE]
        self._storage = app[STORAGE]
        self._sessions = SessionManager(self._store, self.config.session)
        if self.backend is not None:
            await self.backend.startup()
        try:
            yield
        finally:
            if self.backend is not None:
                await self.backend.shutdown()

    @property
    def store(self) -> SharedStore:
        if self._store is None:
            raise RuntimeError("FusionAuthAPI used before the application started")
        return self._store

    @property
    def storage(self) -> FusionStorage:
        if self._storage is None:
            raise RuntimeError("FusionAuthAPI used before the application started")
        return self._storage

    @property
    def sessions(self) -> SessionManager:
        if self._sessions is None:
            raise RuntimeError("FusionAuthAPI used before the application started")
        return self._sessions

    # -- who is calling -------------------------------------------------------
    def client_ip(self, request: web.BaseRequest) -> str:
        """The caller's address (X-Forwarded-For only believed from trusted proxies)."""
        return client_ip(request, self.trusted_proxies)

    async def identify(self, request: web.Request) -> Identity | None:
        """The caller's Identity, or None when the request carries no credentials.

        Sources, in order: ``X-Fusion-API-Token``, ``Authorization: Bearer``,
        the session cookie. Presented but invalid credentials raise 401 so a
        robot with a wrong key learns it at once; the backend being unreachable
        raises 503.
        """
        token = request.headers.get(_API_TOKEN_HEADER)
        if token is not None:
            # Hashing the key again is cheaper than caching it on the request.
            identity = self._identity_of_key(token)
            if identity is None:
                self._audit_bad_key(request, token)
                raise FusionHTTPError(401, "invalid API key")
            if not identity.properties.get(_RECORDED):
                await self._record_identity(identity)
            return identity
        # Sessions and tokens cost a round trip: resolved once per request.
        cached: Identity | None = request.get(_IDENTITY_KEY)
        if cached is not None:
            return cached
        authorization = request.headers.get("Authorization")
        if authorization is not None and authorization[:7].lower() == "bearer ":
            identity = await self._identity_of_bearer(authorization[7:].strip())
            if identity is None:
                raise FusionHTTPError(
                    401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
            await self._record_identity(identity)
        else:
            session_id = self._session_cookie(request)
            if session_id is None:
                return None
            identity = await self.sessions.load(session_id)
            if identity is None:
                return None
            _require_typed_body(request)
            _mark_session(identity, session_id)
        request[_IDENTITY_KEY] = identity
        return identity

    def _audit_bad_key(self, request: web.BaseRequest, token: str) -> None:
        # A prefix of the digest tells keys apart in the log without giving one away.
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        self.audit(
            request,
            None,
            Action("authenticate", context={"api_key_sha256_prefix": digest[:12]}),
            granted=False,
            reason="invalid API key",
        )

    def _session_cookie(self, request: web.BaseRequest) -> str | None:
        """The session id in the Cookie header (None when absent or malformed).

        Read straight from the header: ``request.cookies`` parses every
        cookie with http.cookies, several microseconds on each request.
        Session ids are unquoted URL-safe tokens, so no unquoting is needed.
        """
        header = request.headers.get("Cookie")
        if header is None or self._cookie_prefix not in header:
            return None
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == self._cookie_name and SessionManager.valid_id(value):
                return value
        return None

    def known_caller(self, request: web.Request) -> Identity | None:
        """The caller's Identity when it is known without any I/O (an API key
        already seen by this process, a session in a ``memory://`` store); None
        otherwise, whatever the reason: then await :meth:`authenticate`."""
        headers = request.headers
        token = headers.get(_API_TOKEN_HEADER)
        if token is not None:
            identity = self._identity_of_key(token)
            if identity is None or not identity.properties.get(_RECORDED):
                return None
            return identity
        if "Authorization" in headers:
            return None  # a bearer token: the backend decides
        session_id = self._session_cookie(request)
        if session_id is None:
            return None
        # A store that must be awaited, and a dead session (401), go the awaited way.
        _, identity = self.sessions.load_now(session_id)
        if identity is None:
            return None
        _require_typed_body(request)
        _mark_session(identity, session_id)
        request[_IDENTITY_KEY] = identity
        return identity

    async def authenticate(self, request: web.Request) -> Identity:
        """The caller's Identity; 401 in the envelope when there is none."""
        identity = await self.identify(request)
        if identity is None:
            raise FusionHTTPError(401, "authentication required")
        return identity

    def _identity_of_key(self, token: str) -> Identity | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        # Only digests are compared (by the dict lookup): how long a wrong
        # guess takes tells nothing about the key itself.
        return self._keys.get(digest)

    async def _identity_of_bearer(self, token: str) -> Identity | None:
        if self.backend is None or not token:
            return None
        try:
            identity = await self.backend.authenticate_bearer(token)
        except BackendUnavailableError as exc:
            _LOGGER.warning("authentication backend unavailable: %s", exc)
            raise FusionHTTPError(503, "authentication backend unavailable") from None
        if identity is not None:
            identity.properties[_SOURCE] = "bearer"
        return identity

    async def _record_identity(self, identity: Identity) -> None:
        properties = identity.properties
        if properties.get(_RECORDED):
            return  # an API key's shared Identity, already written
        groups = frozenset(identity.groups)
        if self._seen.get(identity.username) == groups:
            return
        await self.storage.store_identity(
            Identity(username=identity.username, groups=set(identity.groups))
        )
        self._seen[identity.username] = groups
        if properties.get(_SOURCE) == "key":
            properties[_RECORDED] = True

    # -- decisions ------------------------------------------------------------
    @staticmethod
    def is_federation(identity: Identity) -> bool:
        """True for the federation key's identity (never for a session or token)."""
        return identity.properties.get(_FEDERATION) is True

    def can_delete(self, identity: Identity) -> bool:
        """Whether ``identity`` holds the delete right (``can_delete`` in the config)."""
        return self.is_federation(identity) or can_delete(identity, self._can_delete)

    def case_access(self, identity: Identity, case: Case) -> Access | None:
        """Access of ``identity`` to ``case``: the federation key may change every case."""
        if self.is_federation(identity):
            return Access.CHANGE
        return can_access_case(identity, case)

    async def authorize_impl(self, identity: Identity, action: Action, case: Case | None) -> bool:
        """Service hook, called after the framework's checks passed: return False to refuse.

        ``identity`` and ``case`` are shared with other requests (decoded once
        and cached): read them, never modify them.
        """
        return True

    async def authorize(
        self,
        request: web.Request,
        action: Action,
        case: Case | None = None,
        *,
        identity: Identity | None = None,
    ) -> Identity:
        """Authenticate (unless ``identity`` is the caller's, already known), then
        check ``action`` (on ``case``) for the caller.

        401 without credentials; 403 when refused. Every decision is audited.
        """
        if identity is None:
            identity = await self.authenticate(request)
        reason = self._refusal(identity, action, case)
        if (
            reason is None
            and self._has_authorize_impl
            and not await self.authorize_impl(identity, action, case)
        ):
            reason = "not authorized"
        self._conclude(request, identity, action, case, reason)
        return identity

    def authorize_now(
        self, request: web.BaseRequest, action: Action, case: Case | None, identity: Identity
    ) -> bool:
        """:meth:`authorize` without awaiting, for hot paths: True when decided
        (granted and audited; 403 raised when refused); False when the service's
        :meth:`authorize_impl` hook must be awaited: call :meth:`authorize` then."""
        if self._has_authorize_impl:
            return False
        self._conclude(request, identity, action, case, self._refusal(identity, action, case))
        return True

    def _conclude(
        self,
        request: web.BaseRequest,
        identity: Identity,
        action: Action,
        case: Case | None,
        reason: str | None,
    ) -> None:
        if reason is None:
            # The hottest line of every API: straight to the trail.
            self._audit_granted(request, identity.username, action.name, case, action.context)
            return
        self.audit(request, identity, action, case, granted=False, reason=reason)
        raise FusionHTTPError(403, reason)

    def _refusal(self, identity: Identity, action: Action, case: Case | None) -> str | None:
        federation = self.is_federation(identity)
        if action.federation and not federation:
            return "only the federation key may do this"
        if case is not None and not federation:
            access = can_access_case(identity, case)
            if access is None:
                return "access to this case denied"
            if action.change and access is Access.READ:
                return "read-only access to this case"
        if action.delete and not self.can_delete(identity):
            return "delete right required"
        return None

    def audit(
        self,
        request: web.BaseRequest,
        identity: Identity | str | None,
        action: Action | str,
        case: Case | None = None,
        *,
        granted: bool,
        reason: str | None = None,
    ) -> None:
        """Write one audit record: who, what, which case, from where, and the outcome.

        ``identity`` is the caller, or the name a refused caller tried (a login).
        One record on ``fusion.audit`` (see :func:`~fusion.helper.tracing.trace_user_op`).
        """
        name = action if isinstance(action, str) else action.name
        context = None if isinstance(action, str) or not action.context else action.context
        # Skipped whole when nobody listens: this runs on every authorized request.
        if not AUDIT_LOGGER.isEnabledFor(logging.INFO if granted else logging.WARNING):
            return
        if identity is None:
            who = "-"
        elif isinstance(identity, str):
            who = _capped(identity) or "-"
        else:
            who = identity.username
        if granted:
            self._audit_granted(request, who, name, case, context)
            return
        if reason is not None:
            context = {**(context or {}), "reason": reason}
        trace_user_op(
            who,
            name,
            granted=False,
            case_guid=case.guid if case is not None else None,
            client_ip=self.client_ip(request),
            context=context,
        )

    def _audit_granted(
        self,
        request: web.BaseRequest,
        who: str,
        name: str,
        case: Case | None,
        context: dict[str, Any] | None,
    ) -> None:
        trace_user_op(
            who,
            name,
            granted=True,
            case_guid=None if case is None else case.guid,
            client_ip=self.client_ip(request),
            context=context or None,
        )

    # -- login throttling -----------------------------------------------------
    def _throttle_keys(self, username: str | None, ip: str) -> list[str]:
        keys = ["fusion:throttle:ip:" + ip]
        if username is not None:
            # Hashed: usernames are attacker-chosen and may be long or odd.
            digest = hashlib.sha256(username.encode("utf-8", "surrogateescape")).hexdigest()
            keys.append("fusion:throttle:user:" + digest)
        return keys

    async def _reserve_attempt(self, username: str | None, ip: str) -> list[str]:
        """Count a login attempt as a failure *before* its credentials are checked.

        Each counter is incremented atomically in the shared store, so however
        many attempts arrive at once, on however many replicas, at most the
        limit of them is ever verified per window; the others get 429 without
        any verification. What an attempt that did not fail reserved is given
        back by :meth:`_release_attempt`. Returns the keys reserved.
        """
        throttle = self.config.throttle
        if not throttle.enabled:
            return []
        keys = self._throttle_keys(username, ip)
        limits = (throttle.max_failures_per_ip, throttle.max_failures_per_username)
        for index, (key, limit) in enumerate(zip(keys, limits, strict=False)):
            if await self.store.incr(key, ttl=throttle.window) > limit:
                # Only verified attempts count: what the earlier keys reserved goes back.
                for reserved in keys[:index]:
                    await self.store.incr(reserved, ttl=throttle.window, amount=-1)
                left = await self.store.ttl(key)
                retry_after = max(1, math.ceil(left if left is not None else throttle.window))
                raise FusionHTTPError(
                    429,
                    "too many failed logins: try again later",
                    headers={"Retry-After": str(retry_after)},
                )
        return keys

    async def _release_attempt(self, keys: list[str], *, succeeded: bool) -> None:
        """Give back what :meth:`_reserve_attempt` counted for an attempt that did not fail.

        A successful login also clears its username's failures.
        """
        if not keys:
            return
        await self.store.incr(keys[0], ttl=self.config.throttle.window, amount=-1)
        for key in keys[1:]:
            if succeeded:
                await self.store.delete(key)
            else:
                await self.store.incr(key, ttl=self.config.throttle.window, amount=-1)

    # -- routes ---------------------------------------------------------------
    def _came_over_https(self, request: web.BaseRequest) -> bool:
        """Whether the client reached us over HTTPS, directly or through a trusted
        proxy that says so in ``X-Forwarded-Proto``."""
        if request.secure:
            return True
        proto = request.headers.get("X-Forwarded-Proto")
        if proto is None or not self.trusted_proxies:
            return False
        try:
            peer = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return False
        if not any(peer in network for network in self.trusted_proxies):
            return False
        # The proxy nearest to us appends last.
        return proto.rpartition(",")[2].strip().lower() == "https"

    def _cookie_secure(self, request: web.BaseRequest) -> bool:
        return self.config.session.secure or self._came_over_https(request)

    def _set_session_cookie(
        self, request: web.BaseRequest, response: web.StreamResponse, session_id: str
    ) -> None:
        session = self.config.session
        response.set_cookie(
            session.cookie_name,
            session_id,
            domain=session.domain,
            path=session.path,
            max_age=session.max_age,
            secure=self._cookie_secure(request),
            httponly=session.httponly,
            samesite=session.samesite,
        )

    async def login(self, request: web.Request) -> web.Response:
        """``POST /api/auth/login`` ``{"data": {...}}``: a new session for the caller."""
        if self.backend is None:
            raise FusionHTTPError(501, "no authentication backend configured")
        body: Any = await read_json(request, self.max_body_size)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise FusionHTTPError(400, 'login body must be {"data": {...}}')
        username = self.backend.login_username(data)
        tried = data.get("username")
        tried = tried if isinstance(tried, str) else None
        try:
            reserved = await self._reserve_attempt(username, self.client_ip(request))
        except FusionHTTPError:
            self.audit(request, tried, "login", granted=False, reason="too many failed logins")
            raise
        try:
            identity = await self.backend.login(data)
        except LoginBodyError as exc:
            await self._release_attempt(reserved, succeeded=False)
            raise FusionHTTPError(400, str(exc)) from None
        except BackendUnavailableError as exc:
            await self._release_attempt(reserved, succeeded=False)
            _LOGGER.warning("authentication backend unavailable: %s", exc)
            raise FusionHTTPError(503, "authentication backend unavailable") from None
        if identity is None:
            self.audit(request, tried, "login", granted=False, reason="login refused")
            raise FusionHTTPError(400, "login refused")
        await self._release_attempt(reserved, succeeded=True)
        # Always a fresh id: a session id planted before login is worthless.
        session_id = await self.sessions.create(identity, replaces=self._session_cookie(request))
        await self._record_identity(identity)
        self.audit(request, identity, "login", granted=True)
        response = json_response(identity)
        self._set_session_cookie(request, response, session_id)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """``GET /api/auth/logout``: revoke the caller's session on every replica."""
        identity = await self.identify(request)
        session_id = None if identity is None else identity.properties.get(_SESSION_ID)
        if identity is None or session_id is None:
            raise FusionHTTPError(401, "no session")
        await self.sessions.revoke(session_id)
        self.audit(request, identity, "logout", granted=True)
        response = json_response()
        session = self.config.session
        response.del_cookie(
            session.cookie_name,
            domain=session.domain,
            path=session.path,
            secure=self._cookie_secure(request),
            httponly=session.httponly,
            samesite=session.samesite,
        )
        return response

    async def is_logged(self, request: web.Request) -> web.Response:
        """``GET /api/auth/is_logged``: the caller's Identity."""
        return json_response(await self.authenticate(request))

    async def auth_config(self, request: web.Request) -> web.Response:
        """``GET /api/auth/config``: how to log in (AuthInfo)."""
        if self.backend is None:
            raise FusionHTTPError(501, "no authentication backend configured")
        return json_response(self.backend.info())

    async def identities(self, request: web.Request) -> web.Response:
        """``GET /api/auth/identities``: every identity seen so far."""
        await self.authenticate(request)
        return json_response(await self.storage.enumerate_identities())


def _require_typed_body(request: web.BaseRequest) -> None:
    """Refuse a body without a Content-Type on a change authenticated by a cookie.

    Scripts may send bare JSON bodies with an API key, but a browser lets a
    cross-site page send a body without a type (or with ``text/plain``) and
    the user's cookie without a CORS preflight; ``application/json`` always
    needs one. So with a session cookie, a body must say what it is.
    """
    if (
        request.method not in _SAFE_METHODS
        and request.body_exists
        and not request.headers.get("Content-Type")
    ):
        raise FusionHTTPError(
            415, "a request authenticated by a session cookie must send its body's Content-Type"
        )
