"""FusionCaseAPI: the case routes of PROTOCOL.md, with hooks a service overrides."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

from aiohttp import web

from fusion.concept import Case, ConceptError, Identity
from fusion.helper.http_envelope import FusionHTTPError, json_response
from fusion.helper.http_request import get_guid, read_concept, read_json
from fusion.server._lifecycle import started
from fusion.server.appkeys import AUTH, CONSTANT, EVENTS, STORAGE, CaseEventSink
from fusion.server.auth.access import Action
from fusion.server.auth.api import FusionAuthAPI
from fusion.server.case.config import FusionCaseAPIConfig
from fusion.server.event.api import FusionEventAPI, WebhookNotAllowedError
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
    "FusionCaseAPI",
]

_LOGGER = logging.getLogger("fusion.server.case")

CaseT = TypeVar("CaseT", bound=Case)
_R = TypeVar("_R")

ENUMERATE_CASES = Action("enumerate_cases")
CREATE_CASE = Action("create_case", change=True)
RETRIEVE_CASE = Action("retrieve_case")
UPDATE_CASE = Action("update_case", change=True)
DELETE_CASE = Action("delete_case", change=True, delete=True)
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


def _case_guid(request: web.Request) -> UUID:
    return get_guid(request)


class FusionCaseAPI(Generic[CaseT]):
    """Every case route, working out of the box on the server's storage.

    A service overrides the ``*_impl`` hooks to add its own logic (create
    working directories, refuse some updates...) and :meth:`check_webhook_url`
    to restrict webhooks. Authorization, validation and events stay here.

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
    async def enumerate_cases_impl(self, identity: Identity) -> list[CaseT]:
        """Every case (the API keeps those the caller may read)."""
        return await self.storage.enumerate_cases()

    async def retrieve_case_impl(self, case_guid: UUID) -> VersionedCase[CaseT] | None:
        """The stored case and its version (the ETag, and what update and delete expect)."""
        return await self.storage.retrieve_versioned_case(case_guid)

    async def create_case_impl(self, identity: Identity, case: CaseT) -> CaseT:
        """Store a validated new case; raise FusionHTTPError to refuse it."""
        await self.storage.create_case(case)
        return case

    async def update_case_impl(
        self, identity: Identity, case: CaseT, *, expected_version: int
    ) -> CaseT:
        """Store ``case``, already updated and validated, if still at ``expected_version``.

        Let :class:`CaseConflictError` through: the API then reads the case
        again and retries the whole update.
        """
        await self.storage.update_case(case, expected_version=expected_version)
        return case

    async def delete_case_impl(
        self, identity: Identity, case: CaseT, *, expected_version: int
    ) -> bool:
        """Delete ``case`` if still at ``expected_version`` (conflicts as for updates)."""
        return await self.storage.delete_case(case.guid, expected_version=expected_version)

    async def attach_case_impl(
        self, identity: Identity, case: CaseT, next_case_guid: UUID
    ) -> CaseT | None:
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

    async def _existing_case(self, case_guid: UUID) -> VersionedCase[CaseT]:
        found = await self.retrieve_case_impl(case_guid)
        if found is None:
            raise FusionHTTPError(404, f"case {case_guid} not found")
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
        request: web.Request,
        case_guid: UUID,
        action: Action,
        change: Callable[[Identity, CaseT, int], Awaitable[_R]],
    ) -> tuple[_R, int]:
        """Read, authorize on what was read, check If-Match, ``change(identity, case,
        version)``; all again when the change raises CaseConflictError.

        Returns what the change returned and the version it was given.
        """
        attempts = self.config.update_attempts
        async with self._case_lock(case_guid):
            for attempt in range(1, attempts + 1):
                case, version = await self._existing_case(case_guid)
                identity = await self.auth.authorize(request, action, case)
                _check_if_match(request, case_guid, version)
                try:
                    return await change(identity, case, version), version
                except CaseConflictError as exc:
                    _LOGGER.debug("attempt %d of %d failed: %s", attempt, attempts, exc)
        raise FusionHTTPError(
            409, f"case {case_guid} kept changing during {attempts} attempts: try again"
        )

    # -- routes -----------------------------------------------------------------
    async def enumerate_cases(self, request: web.Request) -> web.Response:
        """``GET /api/cases``: the cases the caller may read."""
        identity = await self.auth.authorize(request, ENUMERATE_CASES)
        caller = await self.auth.caller(request)
        access = self.auth.case_access
        cases = [
            case
            for case in await self.enumerate_cases_impl(identity)
            if access(caller, case) is not None
        ]
        return json_response(cases)

    async def create_case(self, request: web.Request) -> web.Response:
        """``POST /api/case``: create a case from a (partial) Case body."""
        identity = await self.auth.authorize(request, CREATE_CASE)
        federation = (await self.auth.caller(request)).federation
        case = await read_concept(request, self.case_type, self.max_body_size)
        case.managed = federation
        await self._check_case(case, federation=federation)
        try:
            case = await self.create_case_impl(identity, case)
        except CaseExistsError as exc:
            raise FusionHTTPError(400, str(exc)) from None
        await self._notify("create_case", case)
        return json_response(case)

    async def retrieve_case(self, request: web.Request) -> web.Response:
        """``GET /api/case/{case_guid}``, with the case's ETag."""
        case_guid = _case_guid(request)
        auth = self.auth
        await auth.caller(request)  # 401 before anything is read
        case, version = await self._existing_case(case_guid)
        await auth.authorize(request, RETRIEVE_CASE, case)
        return json_response(case, headers={"ETag": etag(version)})

    async def update_case(self, request: web.Request) -> web.Response:
        """``PUT /api/case/{case_guid}`` with a partial Case: the update rules of PROTOCOL.md.

        Answers the new ETag; 412 when an If-Match does not match.
        """
        case_guid = _case_guid(request)
        federation = (await self.auth.caller(request)).federation
        changes = await read_json(request, self.max_body_size)
        if not isinstance(changes, dict):
            raise FusionHTTPError(400, "update body must be a JSON object")

        async def change(identity: Identity, case: CaseT, version: int) -> CaseT:
            try:
                case.update(changes)
            except ConceptError as exc:
                raise FusionHTTPError(400, str(exc)) from None
            await self._check_case(case, federation=federation)
            try:
                return await self.update_case_impl(identity, case, expected_version=version)
            except CaseNotFoundError:
                raise FusionHTTPError(404, f"case {case_guid} not found") from None

        case, version = await self._change_case(request, case_guid, UPDATE_CASE, change)
        await self._notify("update_case", case)
        # The storage contract: a write that expected `version` stored version + 1.
        return json_response(case, headers={"ETag": etag(version + 1)})

    async def delete_case(self, request: web.Request) -> web.Response:
        """``DELETE /api/case/{case_guid}``: needs change access and the delete right.

        412 when an If-Match does not match.
        """
        case_guid = _case_guid(request)
        await self.auth.authenticate(request)

        async def change(identity: Identity, case: CaseT, version: int) -> CaseT:
            if not await self.delete_case_impl(identity, case, expected_version=version):
                raise FusionHTTPError(404, f"case {case_guid} not found")
            return case

        case, _ = await self._change_case(request, case_guid, DELETE_CASE, change)
        await self._notify("delete_case", case)
        return json_response()

    async def attach_case(self, request: web.Request) -> web.Response:
        """``PUT /api/case/{case_guid}/attach/{next_case_guid}``: federation key only."""
        case_guid = _case_guid(request)
        next_case_guid = get_guid(request, "next_case_guid")
        action = Action(
            ATTACH_CASE.name,
            change=True,
            federation=True,
            context={"case_guid": str(case_guid), "next_case_guid": str(next_case_guid)},
        )
        identity = await self.auth.authorize(request, action)
        case, _ = await self._existing_case(case_guid)
        try:
            attached = await self.attach_case_impl(identity, case, next_case_guid)
        except CaseExistsError as exc:
            raise FusionHTTPError(400, str(exc)) from None
        if attached is None:
            raise FusionHTTPError(404, f"case {case_guid} not found")
        await self._notify("attach_case", attached, {"previous_guid": str(case_guid)})
        return json_response(attached)
