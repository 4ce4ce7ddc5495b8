"""FusionCaseAPI: the case routes of PROTOCOL.md, with hooks a service overrides."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

from aiohttp import web

from fusion.concept import Case, ConceptError, Identity, json_decoder
from fusion.helper.aiohttp import FusionHTTPError, get_guid, json_response, read_concept, read_json
from fusion.server.appkeys import AUTH, CONSTANT, EVENTS, STORAGE, CaseEventSink
from fusion.server.auth.access import Action
from fusion.server.auth.api import FusionAuthAPI
from fusion.server.case.config import FusionCaseAPIConfig
from fusion.server.event.api import FusionEventAPI, WebhookNotAllowedError
from fusion.server.storage import CaseExistsError, CaseNotFoundError, FusionStorage

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

ENUMERATE_CASES = Action("enumerate_cases")
CREATE_CASE = Action("create_case", change=True)
RETRIEVE_CASE = Action("retrieve_case")
UPDATE_CASE = Action("update_case", change=True)
DELETE_CASE = Action("delete_case", change=True, delete=True)
ATTACH_CASE = Action("attach_case", change=True, federation=True)

_DEFAULT_MAX_BODY = 1024 * 1024
_JSON = "application/json"
# Valid GUIDs of recent requests: uuid.UUID() costs microseconds of pure
# Python on the hottest route. Bounded, and cleared when full.
_GUID_CACHE: dict[str, UUID] = {}
_GUID_CACHE_SIZE = 4096
_DECODED_CACHE_SIZE = 1024


def _case_guid(request: web.Request) -> UUID:
    value = request.match_info.get("case_guid", "")
    found = _GUID_CACHE.get(value)
    if found is not None:
        return found
    guid = get_guid(request)
    if len(_GUID_CACHE) >= _GUID_CACHE_SIZE:
        _GUID_CACHE.clear()
    _GUID_CACHE[value] = guid
    return guid


class FusionCaseAPI(Generic[CaseT]):
    """Every case route, working out of the box on the server's storage.

    A service overrides the ``*_impl`` hooks to add its own logic (create
    working directories, refuse some updates...) and :meth:`check_webhook_url`
    to restrict webhooks. Authorization, validation and events stay here.
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
        self._storage: FusionStorage | None = None
        self._events: CaseEventSink | None = None
        self._app: web.Application | None = None
        self._decoder = json_decoder(case_type)
        # "count" of an envelope holding one case: every field is encoded
        # unless the Struct omits defaults, in which case count varies.
        struct_config = case_type.__struct_config__
        self._count_suffix = b',"count":%d}' % len(case_type.__struct_fields__)
        self._raw_retrieve = (
            type(self).retrieve_case_impl is FusionCaseAPI.retrieve_case_impl
            and not struct_config.omit_defaults
            and not struct_config.array_like
        )
        # Stored JSON -> its decoded case, for the access check of the raw
        # retrieve path (the storage hands out the same bytes while cached).
        self._decoded: dict[bytes, Case] = {}

    # -- wiring ---------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        self._app = app
        app.router.add_get("/api/cases", self.enumerate_cases)
        app.router.add_post("/api/case", self.create_case)
        app.router.add_get("/api/case/{case_guid}", self.retrieve_case)
        app.router.add_put("/api/case/{case_guid}", self.update_case)
        app.router.add_delete("/api/case/{case_guid}", self.delete_case)
        app.router.add_put("/api/case/{case_guid}/attach/{next_case_guid}", self.attach_case)
        app.cleanup_ctx.append(self._lifecycle)

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self._auth = app[AUTH]
        self._storage = app[STORAGE]
        self._events = app.get(EVENTS)
        yield

    @property
    def auth(self) -> FusionAuthAPI:
        if self._auth is None:
            raise RuntimeError("FusionCaseAPI used before the application started")
        return self._auth

    @property
    def storage(self) -> FusionStorage:
        if self._storage is None:
            raise RuntimeError("FusionCaseAPI used before the application started")
        return self._storage

    # -- hooks ------------------------------------------------------------------
    async def enumerate_cases_impl(self, identity: Identity) -> list[CaseT]:
        """Every case (the API keeps those the caller may read)."""
        return await self.storage.enumerate_cases()  # type: ignore[return-value]

    async def retrieve_case_impl(self, case_guid: UUID) -> CaseT | None:
        return await self.storage.retrieve_case(case_guid)  # type: ignore[return-value]

    async def create_case_impl(self, identity: Identity, case: CaseT) -> CaseT:
        """Store a validated new case; raise FusionHTTPError to refuse it."""
        await self.storage.create_case(case)
        return case

    async def update_case_impl(self, identity: Identity, case: CaseT) -> CaseT:
        """Store ``case``, already updated and validated."""
        await self.storage.update_case(case)
        return case

    async def delete_case_impl(self, identity: Identity, case: CaseT) -> bool:
        return await self.storage.delete_case(case.guid)

    async def attach_case_impl(
        self, identity: Identity, case: CaseT, next_case_guid: UUID
    ) -> CaseT | None:
        return await self.storage.attach_case(case.guid, next_case_guid)  # type: ignore[return-value]

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
    async def _check_case(self, identity: Identity, case: Case) -> None:
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
        if case.acs or case.acs_ro or self.auth.is_federation(identity) or self._app is None:
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

    async def _existing_case(self, case_guid: UUID) -> CaseT:
        case = await self.retrieve_case_impl(case_guid)
        if case is None:
            raise FusionHTTPError(404, f"case {case_guid} not found")
        return case

    # -- routes -----------------------------------------------------------------
    async def enumerate_cases(self, request: web.Request) -> web.Response:
        """``GET /api/cases``: the cases the caller may read."""
        identity = await self.auth.authorize(request, ENUMERATE_CASES)
        access = self.auth.case_access
        cases = [
            case
            for case in await self.enumerate_cases_impl(identity)
            if access(identity, case) is not None
        ]
        return json_response(cases)

    async def create_case(self, request: web.Request) -> web.Response:
        """``POST /api/case``: create a case from a (partial) Case body."""
        identity = await self.auth.authorize(request, CREATE_CASE)
        case = await read_concept(request, self.case_type, self.max_body_size)
        case.managed = self.auth.is_federation(identity)
        await self._check_case(identity, case)
        try:
            case = await self.create_case_impl(identity, case)
        except CaseExistsError as exc:
            raise FusionHTTPError(400, str(exc)) from None
        await self._notify("create_case", case)
        return json_response(case)

    async def retrieve_case(self, request: web.Request) -> web.Response:
        """``GET /api/case/{case_guid}``."""
        case_guid = _case_guid(request)
        auth = self.auth
        if self._raw_retrieve:
            # The hottest route: no await where the answer is already at hand
            # (a known API key, a cached case), the stored JSON sent as it is.
            identity = auth.known_caller(request) or await auth.authenticate(request)
            storage = self.storage
            raw = storage.cached_case_json(case_guid) or await storage.retrieve_case_json(case_guid)
            if raw is None:
                raise FusionHTTPError(404, f"case {case_guid} not found")
            decoded = self._decoded
            case = decoded.get(raw)
            if case is None:
                if len(decoded) >= _DECODED_CACHE_SIZE:
                    decoded.clear()
                case = decoded[raw] = self._decoder.decode(raw)
            if not auth.authorize_now(request, RETRIEVE_CASE, case, identity):
                await auth.authorize(request, RETRIEVE_CASE, case, identity=identity)
            return web.Response(
                body=b'{"status":200,"data":' + raw + self._count_suffix, content_type=_JSON
            )
        identity = await auth.authenticate(request)
        case = await self._existing_case(case_guid)
        await auth.authorize(request, RETRIEVE_CASE, case, identity=identity)
        return json_response(case)

    async def update_case(self, request: web.Request) -> web.Response:
        """``PUT /api/case/{case_guid}`` with a partial Case: the update rules of PROTOCOL.md."""
        case_guid = _case_guid(request)
        await self.auth.authenticate(request)
        changes = await read_json(request, self.max_body_size)
        if not isinstance(changes, dict):
            raise FusionHTTPError(400, "update body must be a JSON object")
        case = await self._existing_case(case_guid)
        identity = await self.auth.authorize(request, UPDATE_CASE, case)
        try:
            case.update(changes)
        except ConceptError as exc:
            raise FusionHTTPError(400, str(exc)) from None
        await self._check_case(identity, case)
        try:
            case = await self.update_case_impl(identity, case)
        except CaseNotFoundError:
            raise FusionHTTPError(404, f"case {case_guid} not found") from None
        await self._notify("update_case", case)
        return json_response(case)

    async def delete_case(self, request: web.Request) -> web.Response:
        """``DELETE /api/case/{case_guid}``: needs change access and the delete right."""
        case_guid = _case_guid(request)
        await self.auth.authenticate(request)
        case = await self._existing_case(case_guid)
        identity = await self.auth.authorize(request, DELETE_CASE, case)
        if not await self.delete_case_impl(identity, case):
            raise FusionHTTPError(404, f"case {case_guid} not found")
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
        case = await self._existing_case(case_guid)
        try:
            attached = await self.attach_case_impl(identity, case, next_case_guid)
        except CaseExistsError as exc:
            raise FusionHTTPError(400, str(exc)) from None
        if attached is None:
            raise FusionHTTPError(404, f"case {case_guid} not found")
        await self._notify("attach_case", attached, {"previous_guid": str(case_guid)})
        return json_response(attached)
