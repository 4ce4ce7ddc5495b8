"""FusionAuthAPI: login, sessions, API keys, the federation key, authorization and audit."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from fusion.concept import AuthInfo, Case, Identity
from fusion.helper.http_envelope import FusionHTTPError, json_response
from fusion.helper.http_request import IPNetwork, client_ip, read_json
from fusion.helper.store import SharedStore, StoreUnavailableError
from fusion.helper.tracing import AUDIT_LOGGER, trace_user_op
from fusion.server._lifecycle import started
from fusion.server.appkeys import AUTH, CONFIG, STORAGE, STORE
from fusion.server.auth.access import (
    Access,
    Action,
    can_access_case,
    can_delete,
    closed_case_refusal,
)
from fusion.server.auth.backend import (
    BackendUnavailableError,
    BearerGrant,
    FusionAuthBackend,
    LoginBodyError,
)
from fusion.server.auth.caller import Caller
from fusion.server.auth.config import FusionAuthAPIConfig
from fusion.server.auth.session import SessionManager
from fusion.server.openapi import LoginBody, operation
from fusion.server.routing import expect_handler
from fusion.server.storage import FusionStorage

__all__ = ["FusionAuthAPI"]

_LOGGER = logging.getLogger("fusion.server.auth")

_CALLER_KEY = web.RequestKey("fusion_caller", Caller)
_API_TOKEN_HEADER = "X-Fusion-API-Token"  # noqa: S105 - a header name
_DEFAULT_MAX_BODY = 64 * 1024
# The longest tried username an audit record keeps (usernames are attacker-chosen).
_AUDIT_NAME_MAX = 128
# Methods a cross-site page can send; a cookie alone must not carry their JSON bodies.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_ENDED_CHANNEL = "session:ended"
"""A logout publishes the id of the session it revoked here, so the event API
of every replica ends that session's streams at once."""


def _capped(name: str) -> str:
    return name if len(name) <= _AUDIT_NAME_MAX else name[:_AUDIT_NAME_MAX] + "..."


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
        # SHA-256 of each key -> its caller (frozen: shared by all its requests).
        self._keys: dict[str, Caller] = {
            api_key.digest: Caller(
                Identity(username=api_key.username, groups=frozenset(api_key.groups)), "key"
            )
            for api_key in config.api_keys
        }
        if config.federation is not None:
            federation = config.federation
            identity = Identity(username=federation.username, groups=frozenset(federation.groups))
            self._keys[federation.digest] = Caller(identity, "key", federation=True)
        self._can_delete = frozenset(config.can_delete)
        self._cookie_name = config.session.cookie_name
        self._cookie_prefix = self._cookie_name + "="
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
        app.router.add_post("/api/auth/login", self.login, expect_handler=expect_handler)
        app.router.add_get("/api/auth/logout", self.logout, expect_handler=expect_handler)
        app.router.add_get("/api/auth/is_logged", self.is_logged, expect_handler=expect_handler)
        app.router.add_get("/api/auth/config", self.auth_config, expect_handler=expect_handler)
        app.router.add_get("/api/auth/identities", self.identities, expect_handler=expect_handler)
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
        return started(self._store, "FusionAuthAPI")

    @property
    def storage(self) -> FusionStorage:
        return started(self._storage, "FusionAuthAPI")

    @property
    def sessions(self) -> SessionManager:
        return started(self._sessions, "FusionAuthAPI")

    # -- who is calling -------------------------------------------------------
    def client_ip(self, request: web.BaseRequest) -> str:
        """The caller's address (X-Forwarded-For only believed from trusted proxies)."""
        return client_ip(request, self.trusted_proxies)

    async def identify(self, request: web.Request) -> Caller | None:
        """The request's caller, or None when it carries no credentials.

        Sources, in order: ``X-Fusion-API-Token``, ``Authorization: Bearer``,
        the session cookie. Presented but invalid credentials raise 401 so a
        robot with a wrong key learns it at once; the backend being unreachable
        raises 503. Resolved once per request.
        """
        caller = request.get(_CALLER_KEY)
        if caller is None:
            caller = await self._resolve(request)
            if caller is None:
                return None
            request[_CALLER_KEY] = caller
        return caller

    async def _resolve(self, request: web.Request) -> Caller | None:
        token = request.headers.get(_API_TOKEN_HEADER)
        if token is not None:
            digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
            # Only digests are compared (by the dict lookup): how long a wrong
            # guess takes tells nothing about the key itself.
            caller = self._keys.get(digest)
            if caller is None:
                self._audit_bad_key(request, digest)
                raise FusionHTTPError(401, "invalid API key")
            await self._record_identity(caller.identity)
            return caller
        authorization = request.headers.get("Authorization")
        if authorization is not None and authorization[:7].lower() == "bearer ":
            grant = await self._bearer_grant(authorization[7:].strip())
            if grant is None:
                raise FusionHTTPError(
                    401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
            await self._record_identity(grant.identity)
            return Caller(grant.identity, "bearer", expires=grant.expires)
        session_id = self._session_cookie(request)
        if session_id is None:
            return None
        identity = await self.sessions.load(session_id)
        if identity is None:
            return None
        _require_typed_body(request)
        return Caller(identity, "session", session_id=session_id)

    def _audit_bad_key(self, request: web.BaseRequest, digest: str) -> None:
        # A prefix of the digest tells keys apart in the log without giving one away.
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

    async def caller(self, request: web.Request) -> Caller:
        """The request's caller; 401 in the envelope when there is none."""
        caller = await self.identify(request)
        if caller is None:
            raise FusionHTTPError(401, "authentication required")
        return caller

    async def authenticate(self, request: web.Request) -> Identity:
        """The caller's Identity; 401 in the envelope when there is none."""
        return (await self.caller(request)).identity

    async def _bearer_grant(self, token: str) -> BearerGrant | None:
        if self.backend is None or not token:
            return None
        try:
            return await self.backend.authenticate_bearer(token)
        except BackendUnavailableError as exc:
            _LOGGER.warning("authentication backend unavailable: %s", exc)
            raise FusionHTTPError(503, "authentication backend unavailable") from None

    async def _record_identity(self, identity: Identity) -> None:
        # username -> groups this process already wrote: no storage write per request.
        if self._seen.get(identity.username) == identity.groups:
            return
        await self.storage.store_identity(identity)
        self._seen[identity.username] = identity.groups

    # -- decisions ------------------------------------------------------------
    def can_delete(self, caller: Caller) -> bool:
        """Whether ``caller`` holds the delete right (``can_delete`` in the config)."""
        return caller.federation or can_delete(caller.identity, self._can_delete)

    def case_access(self, caller: Caller, case: Case) -> Access | None:
        """Access of ``caller`` to ``case``: the federation key may change every case."""
        if caller.federation:
            return Access.CHANGE
        return can_access_case(caller.identity, case)

    async def authorize_impl(self, identity: Identity, action: Action, case: Case | None) -> bool:
        """Service hook, called after the framework's checks passed: return False to refuse.

        ``identity`` is frozen; ``case`` is the request's own copy.
        """
        return True

    async def authorize(
        self, request: web.Request, action: Action, case: Case | None = None
    ) -> Identity:
        """Authenticate, then check ``action`` (on ``case``) for the caller.

        401 without credentials; 403 when refused: no access to ``case``,
        read-only access for a change, a change of a closed case (see
        :func:`~fusion.server.auth.access.closed_case_refusal`), the delete
        right missing, or :meth:`authorize_impl` saying no. Every decision is
        audited.
        """
        caller = await self.caller(request)
        identity = caller.identity
        reason = self._refusal(caller, action, case)
        if reason is None and not await self.authorize_impl(identity, action, case):
            reason = "not authorized"
        if reason is not None:
            self.audit(request, identity, action, case, granted=False, reason=reason)
            raise FusionHTTPError(403, reason)
        self._audit_granted(request, identity.username, action.name, case, action.context)
        return identity

    def _refusal(self, caller: Caller, action: Action, case: Case | None) -> str | None:
        if action.federation and not caller.federation:
            return "only the federation key may do this"
        if case is not None and not caller.federation:
            access = can_access_case(caller.identity, case)
            if access is None:
                return "access to this case denied"
            if action.change and access is Access.READ:
                return "read-only access to this case"
        if action.change and case is not None and (closed := closed_case_refusal(action, case)):
            return closed
        if action.delete and not self.can_delete(caller):
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
        # Every authorized request passes here: nothing is computed for a level off.
        if not AUDIT_LOGGER.isEnabledFor(logging.INFO):
            return
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
        keys = ["throttle:ip:" + ip]
        if username is not None:
            # Hashed: usernames are attacker-chosen and may be long or odd.
            digest = hashlib.sha256(username.encode("utf-8", "surrogateescape")).hexdigest()
            keys.append("throttle:user:" + digest)
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

    @operation(
        "Log in: a session cookie",
        request=LoginBody,
        response=Identity,
        errors=(400, 429, 501, 503),
        auth=False,
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

    @operation("Log out: revoke the session everywhere")
    async def logout(self, request: web.Request) -> web.Response:
        """``GET /api/auth/logout``: revoke the caller's session on every replica,
        and end its event streams there."""
        caller = await self.identify(request)
        session_id = None if caller is None else caller.session_id
        if caller is None or session_id is None:
            raise FusionHTTPError(401, "no session")
        await self.sessions.revoke(session_id)
        try:
            await self.store.publish(SESSION_ENDED_CHANNEL, session_id.encode())
        except StoreUnavailableError as exc:
            # The session is gone: the streams' periodic session check ends them.
            _LOGGER.warning("logout not announced to the event streams: %s", exc)
        self.audit(request, caller.identity, "logout", granted=True)
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

    @operation("The caller's Identity", response=Identity)
    async def is_logged(self, request: web.Request) -> web.Response:
        """``GET /api/auth/is_logged``: the caller's Identity."""
        return json_response(await self.authenticate(request))

    @operation("The backend's AuthInfo", response=AuthInfo, errors=(501,), auth=False)
    async def auth_config(self, request: web.Request) -> web.Response:
        """``GET /api/auth/config``: how to log in (AuthInfo)."""
        if self.backend is None:
            raise FusionHTTPError(501, "no authentication backend configured")
        return json_response(self.backend.info())

    @operation("The identities seen so far", response=list[Identity])
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
