"""FusionCaseAPI: the case routes of PROTOCOL.md, with hooks a service overrides."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import msgspec
from aiohttp import web

from fusion.concept import Case, ConceptError, Identity
from fusion.helper.http_envelope import FusionHTTPError, json_response
from fusion.helper.http_request import get_guid, read_concept, read_json
from fusion.server._lifecycle import started
from fusion.server.appkeys import AUTH, CASE_API, CONSTANT, EVENTS, STORAGE, CaseEventSink
from fusion.server.auth.access import Action
from fusion.server.auth.api import FusionAuthAPI
from fusion.server.auth.caller import Caller
from fusion.server.case.config import FusionCaseAPIConfig
from fusion.server.event.api import FusionEventAPI, WebhookNotAllowedError
from fusion.server.openapi import operation
from fusion.server.routing import expect_handler
from fusion.server.storage import (
    CaseConflictError,
    CaseExistsError,
    CaseNotFoundError,
    FusionStorage,
    VersionedCase,
)

__all__ = [
    "ATTACH_CASE",
    "CREATE_CASE",
    "DELETE_CASE",
    "ENUMERATE_CASES",
    "RETRIEVE_CASE",
    "UPDATE_CASE",
    "CaseContext",
    "FusionCaseAPI",
]

_LOGGER = logging.getLogger("fusion.server.case")

CaseT = TypeVar("CaseT", bound=Case)
_R = TypeVar("_R")

ENUMERATE_CASES = Action("enumerate_cases")
CREATE_CASE = Action("create_case", change=True)
RETRIEVE_CASE = Action("retrieve_case")
UPDATE_CASE = Action("update_case", change=True)
# The update sending "closed": null: the one change a closed case accepts, beside delete.
_REOPEN_CASE = Action(UPDATE_CASE.name, change=True, allow_closed=True)
DELETE_CASE = Action("delete_case", change=True, delete=True, allow_closed=True)
ATTACH_CASE = Action("attach_case", change=True, federation=True)

_DEFAULT_MAX_BODY = 1024 * 1024


def etag(version: int) -> str:
    """The strong ETag of a case at ``version``, as sent (quotes included)."""
    return f'"{version:d}"'


def _check_if_match(request: web.Request, case_guid: UUID, version: int) -> None:
    """412 when the request carries an If-Match that the stored version does not match."""
    tags = request.if_match
    if tags is None:
        return
    value = str(version)
    # Strong comparison (RFC 9110 13.1.1): a weak tag never matches.
    if any(tag.value == "*" or (not tag.is_weak and tag.value == value) for tag in tags):
        return
    raise FusionHTTPError(
        412, f"case {case_guid} is at ETag {etag(version)}, not {request.headers['If-Match']}"
    )


# What a change of a case may answer beyond the implied: concurrent changes,
# If-Match mismatch, a service hook's refusal (422 by convention).
_CHANGE_ERRORS = (409, 412, 422)


def _case_guid(request: web.Request) -> UUID:
    return get_guid(request)


class CaseContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a case hook knows of the request it serves, built once per request.

    - ``request``: the aiohttp request;
    - ``caller``: the authenticated :class:`~fusion.server.auth.caller.Caller`
      (``identity`` and ``federation`` are shortcuts to its fields);
    - ``changes``: for an update, its body as sent, read-only, before it is
      applied (None for every other hook);
    - ``ext``: a dict the hook may fill; what it holds when the request
      succeeds is the ``ext`` of the case event the framework emits for it
      (create_case, update_case, delete_case, attach_case; for attach the
      framework's ``previous_guid`` is added to it). The event of a request
      whose hook left ``ext`` empty carries ``"ext": null``.

    A hook refuses the request with a reason by raising
    :class:`~fusion.helper.http_envelope.FusionHTTPError` (answered in the
    envelope, with its status and message) before it stores anything.
    """

    request: web.Request
    caller: Caller
    changes: Mapping[str, Any] | None = None
    ext: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def identity(self) -> Identity:
        """Who is calling (``caller.identity``, frozen)."""
        return self.caller.identity

    @property
    def federation(self) -> bool:
        """Whether the caller is the federation key (``caller.federation``)."""
        return self.caller.federation


class FusionCaseAPI(Generic[CaseT]):
    """Every case route, working out of the box on the server's storage.

    A service overrides the ``*_impl`` hooks to add its own logic (create
    working directories, refuse some updates, add ``ext`` to the events...)
    and :meth:`check_webhook_url` to restrict webhooks. Each hook gets the
    request's :class:`CaseContext` first, and cases that are the request's own
    copies (a hook may change them). Authorization, validation and events stay
    here; a service's own routes authorize with :meth:`authorize_case`.

    Update and delete are a compare-and-swap on the case's stored version:
    read the case and its version, authorize on what was read, change it,
    write it only if the stored version has not moved on. On a conflict the
    whole step (read, authorize, change, write) runs again, at most
    ``config.update_attempts`` times, then the answer is 409. Requests of
    this process on one case wait for each other, so only other replicas'
    writes can cause a conflict.
    """

    def __init__(
        self,
        config: FusionCaseAPIConfig,
        case_type: type[CaseT] = Case,  # type: ignore[assignment]
        *,
        max_body_size: int = _DEFAULT_MAX_BODY,
    ) -> None:
        self.config = config
        self.case_type = case_type
        self.max_body_size = max_body_size
        self._auth: FusionAuthAPI | None = None
        self._storage: FusionStorage[CaseT] | None = None
        self._events: CaseEventSink | None = None
        self._app: web.Application | None = None
        # case GUID -> (its lock, how many requests hold or wait for it).
        self._case_locks: dict[UUID, tuple[asyncio.Lock, int]] = {}

    # -- wiring ---------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        self._app = app
        app[CASE_API] = self
        app.router.add_get("/api/cases", self.enumerate_cases, expect_handler=expect_handler)
        app.router.add_post("/api/case", self.create_case, expect_handler=expect_handler)
        app.router.add_get(
            "/api/case/{case_guid}", self.retrieve_case, expect_handler=expect_handler
        )
        app.router.add_put("/api/case/{case_guid}", self.update_case, expect_handler=expect_handler)
        app.router.add_delete(
            "/api/case/{case_guid}", self.delete_case, expect_handler=expect_handler
        )
        app.router.add_put(
            "/api/case/{case_guid}/attach/{next_case_guid}",
            self.attach_case,
            expect_handler=expect_handler,
        )
        app.cleanup_ctx.append(self._lifecycle)

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self._auth = app[AUTH]
        self._storage = app[STORAGE]
        self._events = app.get(EVENTS)
        yield

    @property
    def auth(self) -> FusionAuthAPI:
        return started(self._auth, "FusionCaseAPI")

    @property
    def storage(self) -> FusionStorage[CaseT]:
        return started(self._storage, "FusionCaseAPI")

    # -- hooks ------------------------------------------------------------------
    async def enumerate_cases_impl(self, ctx: CaseContext) -> list[CaseT]:
        """Every case (the API keeps those the caller may read)."""
        return await self.storage.enumerate_cases()

    async def retrieve_case_impl(
        self, ctx: CaseContext, case_guid: UUID
    ) -> VersionedCase[CaseT] | None:
        """The stored case and its version (the ETag, and what update and delete expect).

        Every route on one case reads it here, before authorizing on it: the
        caller is authenticated but not yet authorized.
        """
        return await self.storage.retrieve_versioned_case(case_guid)

    async def create_case_impl(self, ctx: CaseContext, case: CaseT) -> CaseT:
        """Store a validated new case; raise FusionHTTPError before storing to refuse it."""
        await self.storage.create_case(case)
        return case

    async def update_case_impl(
        self, ctx: CaseContext, case: CaseT, *, expected_version: int
    ) -> CaseT:
        """Store ``case``, already updated and validated, if still at ``expected_version``.

        ``ctx.changes`` is what the caller sent. Let :class:`CaseConflictError`
        through: the API then reads the case again and retries the whole
        update, this hook included (with the same ``ctx``).
        """
        await self.storage.update_case(case, expected_version=expected_version)
        return case

    async def delete_case_impl(
        self, ctx: CaseContext, case: CaseT, *, expected_version: int
    ) -> bool:
        """Delete ``case`` if still at ``expected_version`` (conflicts as for updates)."""
        return await self.storage.delete_case(case.guid, expected_version=expected_version)

    async def attach_case_impl(
        self, ctx: CaseContext, case: CaseT, next_case_guid: UUID
    ) -> CaseT | None:
        """Move ``case`` under ``next_case_guid``: the moved case (None: it was gone)."""
        return await self.storage.attach_case(case.guid, next_case_guid)

    def check_webhook_url(self, url: str) -> str | None:
        """Why ``url`` may not be a webhook of a case (None: it may)."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return f"invalid webhook URL {url!r}"
        if parts.scheme.lower() not in self.config.webhook_schemes or not parts.hostname:
            return f"invalid webhook URL {url!r}: expected " + " or ".join(
                f"{scheme}://host/..." for scheme in self.config.webhook_schemes
            )
        return None

    # -- helpers ----------------------------------------------------------------
    async def _check_case(self, case: Case, *, federation: bool) -> None:
        if len(case.webhooks) > self.config.max_webhooks:
            raise FusionHTTPError(
                400, f"a case carries at most {self.config.max_webhooks} webhooks"
            )
        for url in case.webhooks:
            reason = self.check_webhook_url(url)
            if reason is not None:
                raise FusionHTTPError(400, reason)
        # Whoever may edit a case must not make the server call arbitrary
        # (internal) addresses: only URLs under the event API's prefixes.
        if case.webhooks and isinstance(self._events, FusionEventAPI):
            try:
                self._events.check_webhooks(case.webhooks)
            except WebhookNotAllowedError as exc:
                raise FusionHTTPError(400, str(exc)) from None
        if case.acs or case.acs_ro or federation or self._app is None:
            return
        constant_api = self._app.get(CONSTANT)
        constant = None if constant_api is None else await constant_api.refresh()
        if constant is not None and not constant.allow_empty_acs:
            raise FusionHTTPError(400, "acs must not be empty (this service forbids open cases)")

    async def _notify(self, category: str, case: Case, ext: dict[str, Any] | None = None) -> None:
        if self._events is None:
            return
        # The change is stored: an event that cannot be sent must not turn it into an error.
        try:
            await self._events.notify(category, case, ext)
        except Exception:
            _LOGGER.exception("cannot notify %s of case %s", category, case.guid)

    async def _context(self, request: web.Request) -> CaseContext:
        """The request's context: 401 in the envelope without credentials."""
        return CaseContext(request=request, caller=await self.auth.caller(request))

    async def _authorized_case(
        self, ctx: CaseContext, action: Action, case_guid: UUID
    ) -> VersionedCase[CaseT]:
        """Read the case (404), then authorize ``action`` on it (403, audited once)."""
        found = await self.retrieve_case_impl(ctx, case_guid)
        if found is None:
            raise FusionHTTPError(404, f"case {case_guid} not found")
        await self.auth.authorize(ctx.request, action, found.case)
        return found

    @asynccontextmanager
    async def _case_lock(self, case_guid: UUID) -> AsyncIterator[None]:
        """Serialise this process's changes of one case (no conflicts among them)."""
        locks = self._case_locks
        lock, users = locks.get(case_guid) or (asyncio.Lock(), 0)
        locks[case_guid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = locks[case_guid]
            if users == 1:
                del locks[case_guid]
            else:
                locks[case_guid] = (lock, users - 1)

    async def _change_case(
        self,
        ctx: CaseContext,
        case_guid: UUID,
        action: Action,
        change: Callable[[CaseT, int], Awaitable[_R]],
    ) -> tuple[_R, int]:
        """Read, authorize on what was read, check If-Match, ``change(case, version)``;
        all again when the change raises CaseConflictError.

        Returns what the change returned and the version it was given.
        """
        attempts = self.config.update_attempts
        async with self._case_lock(case_guid):
            for attempt in range(1, attempts + 1):
                case, version = await self._authorized_case(ctx, action, case_guid)
                _check_if_match(ctx.request, case_guid, version)
                try:
                    return await change(case, version), version
                except CaseConflictError as exc:
                    _LOGGER.debug("attempt %d of %d failed: %s", attempt, attempts, exc)
        raise FusionHTTPError(
            409, f"case {case_guid} kept changing during {attempts} attempts: try again"
        )

    # -- for a service's own routes ----------------------------------------------
    async def authorize_case(
        self, request: web.Request, action: Action, case_guid: UUID | None = None
    ) -> CaseT:
        """The case a service route works on, once ``action`` is authorized on it.

        ``case_guid`` defaults to the ``{case_guid}`` of the route's path (400
        when it is not a canonical GUID). Answers 401 without credentials,
        404 when the case does not exist, 403 without access to it, with
        read-only access for a ``change`` action, for a ``change`` action on a
        closed case (unless ``allow_closed``), or when
        :meth:`FusionAuthAPI.authorize_impl` refuses; the decision is audited
        once. Returns the request's own copy of the case. The case routes
        authorize the same way.
        """
        if case_guid is None:
            case_guid = _case_guid(request)
        ctx = await self._context(request)
        return (await self._authorized_case(ctx, action, case_guid)).case

    # -- routes -----------------------------------------------------------------
    @operation("The cases the caller may read", response=list[Case])
    async def enumerate_cases(self, request: web.Request) -> web.Response:
        """``GET /api/cases``: the cases the caller may read."""
        await self.auth.authorize(request, ENUMERATE_CASES)
        ctx = await self._context(request)
        access = self.auth.case_access
        caller = ctx.caller
        cases = [
            case
            for case in await self.enumerate_cases_impl(ctx)
            if access(caller, case) is not None
        ]
        return json_response(cases)

    @operation("Create a case", request=Case, response=Case, errors=(422,))
    async def create_case(self, request: web.Request) -> web.Response:
        """``POST /api/case``: create a case from a (partial) Case body."""
        await self.auth.authorize(request, CREATE_CASE)
        ctx = await self._context(request)
        federation = ctx.federation
        case = await read_concept(request, self.case_type, self.max_body_size)
        case.managed = federation
        await self._check_case(case, federation=federation)
        try:
            case = await self.create_case_impl(ctx, case)
        except CaseExistsError as exc:
            raise FusionHTTPError(400, str(exc)) from None
        await self._notify("create_case", case, ctx.ext or None)
        return json_response(case)

    @operation("A case, with its ETag", response=Case)
    async def retrieve_case(self, request: web.Request) -> web.Response:
        """``GET /api/case/{case_guid}``, with the case's ETag."""
        case_guid = _case_guid(request)
        ctx = await self._context(request)  # 401 before anything is read
        case, version = await self._authorized_case(ctx, RETRIEVE_CASE, case_guid)
        return json_response(case, headers={"ETag": etag(version)})

    @operation("Update a case", request=Case, response=Case, errors=_CHANGE_ERRORS)
    async def update_case(self, request: web.Request) -> web.Response:
        """``PUT /api/case/{case_guid}`` with a partial Case: the update rules of PROTOCOL.md.

        Answers the new ETag; 412 when an If-Match does not match.
        """
        case_guid = _case_guid(request)
        caller = await self.auth.caller(request)
        changes = await read_json(request, self.max_body_size)
        if not isinstance(changes, dict):
            raise FusionHTTPError(400, "update body must be a JSON object")
        ctx = CaseContext(request=request, caller=caller, changes=MappingProxyType(changes))
        reopens = "closed" in changes and changes["closed"] is None
        action = _REOPEN_CASE if reopens else UPDATE_CASE

        async def change(case: CaseT, version: int) -> CaseT:
            try:
                case.update(changes)
            except ConceptError as exc:
                raise FusionHTTPError(400, str(exc)) from None
            await self._check_case(case, federation=caller.federation)
            try:
                return await self.update_case_impl(ctx, case, expected_version=version)
            except CaseNotFoundError:
                raise FusionHTTPError(404, f"case {case_guid} not found") from None

        case, version = await self._change_case(ctx, case_guid, action, change)
        await self._notify("update_case", case, ctx.ext or None)
        # The storage contract: a write that expected `version` stored version + 1.
        return json_response(case, headers={"ETag": etag(version + 1)})

    @operation("Delete a case", errors=_CHANGE_ERRORS)
    async def delete_case(self, request: web.Request) -> web.Response:
        """``DELETE /api/case/{case_guid}``: needs change access and the delete right.

        412 when an If-Match does not match.
        """
        case_guid = _case_guid(request)
        ctx = await self._context(request)

        async def change(case: CaseT, version: int) -> CaseT:
            if not await self.delete_case_impl(ctx, case, expected_version=version):
                raise FusionHTTPError(404, f"case {case_guid} not found")
            return case

        case, _ = await self._change_case(ctx, case_guid, DELETE_CASE, change)
        await self._notify("delete_case", case, ctx.ext or None)
        return json_response()

    @operation("Attach a case under another GUID", response=Case, errors=(422,))
    async def attach_case(self, request: web.Request) -> web.Response:
        """``PUT /api/case/{case_guid}/attach/{next_case_guid}``: federation key only,
        refused on a closed case."""
        case_guid = _case_guid(request)
        next_case_guid = get_guid(request, "next_case_guid")
        action = Action(
            ATTACH_CASE.name,
            change=True,
            federation=True,
            context={"case_guid": str(case_guid), "next_case_guid": str(next_case_guid)},
        )
        ctx = await self._context(request)
        case, _ = await self._authorized_case(ctx, action, case_guid)
        try:
            attached = await self.attach_case_impl(ctx, case, next_case_guid)
        except CaseExistsError as exc:
            raise FusionHTTPError(400, str(exc)) from None
        if attached is None:
            raise FusionHTTPError(404, f"case {case_guid} not found")
        # The framework's previous_guid wins over a hook's key of that name.
        await self._notify("attach_case", attached, {**ctx.ext, "previous_guid": str(case_guid)})
        return json_response(attached)
