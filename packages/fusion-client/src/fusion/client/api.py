"""One small client class per Fusion API: auth, cases, constant, info."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar, overload
from uuid import UUID

from fusion.client.client import FusionClient
from fusion.client.errors import FusionAPIError
from fusion.concept import AuthInfo, Case, Constant, Identity, Info

__all__ = [
    "FusionAuthAPIClient",
    "FusionCaseAPIClient",
    "FusionConstantAPIClient",
    "FusionInfoAPIClient",
    "case_guid_str",
]

CaseT = TypeVar("CaseT", bound=Case)
ConstantT = TypeVar("ConstantT", bound=Constant)


def case_guid_str(case_guid: UUID | str) -> str:
    """Canonical GUID text; refuses anything else (it becomes part of a URL path)."""
    if isinstance(case_guid, UUID):
        return str(case_guid)
    try:
        return str(UUID(case_guid))
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"invalid case GUID {case_guid!r}") from None


class FusionAuthAPIClient:
    """``/api/auth/*``: log in and out, who am I, how to log in, identities seen."""

    def __init__(self, client: FusionClient) -> None:
        self.client = client

    async def login(self, username: str, password: str) -> Identity:
        """Log in with a username and password (basic, LDAP); keeps the session cookie."""
        body = {"data": {"username": username, "password": password}}
        return await self.client.request(
            "POST", "/api/auth/login", json=body, concept_type=Identity
        )

    async def login_code(
        self, code: str, *, code_verifier: str | None = None, nonce: str | None = None
    ) -> Identity:
        """Log in with an OIDC/Keycloak authorization code.

        ``code_verifier``: the PKCE verifier whose challenge started the flow;
        ``nonce``: the one sent to the provider, checked against the ID token.
        """
        data = {"code": code}
        if code_verifier is not None:
            data["code_verifier"] = code_verifier
        if nonce is not None:
            data["nonce"] = nonce
        body = {"data": data}
        return await self.client.request(
            "POST", "/api/auth/login", json=body, concept_type=Identity
        )

    async def logout(self) -> None:
        """Revoke the session on the server, then forget the cookie."""
        try:
            await self.client.request("GET", "/api/auth/logout")
        finally:
            self.client.clear_cookies()

    async def is_logged(self) -> Identity | None:
        """The caller's identity, or ``None`` when the server answers 401.

        Any other error (403, 5xx, connection) is raised.
        """
        try:
            return await self.client.request("GET", "/api/auth/is_logged", concept_type=Identity)
        except FusionAPIError as exc:
            if exc.status == 401:
                return None
            raise

    async def config(self) -> AuthInfo:
        """How to log in on this server (backend type and public parameters)."""
        return await self.client.request("GET", "/api/auth/config", concept_type=AuthInfo)

    async def identities(self) -> list[Identity]:
        """The identities the server has seen so far."""
        return await self.client.request("GET", "/api/auth/identities", concept_type=list[Identity])


class FusionCaseAPIClient(Generic[CaseT]):
    """``/api/case*``: cases, decoded into ``case_type`` (a service's Case subclass)."""

    @overload
    def __init__(self: FusionCaseAPIClient[Case], client: FusionClient) -> None: ...

    @overload
    def __init__(self, client: FusionClient, case_type: type[CaseT]) -> None: ...

    def __init__(self, client: FusionClient, case_type: type[Any] = Case) -> None:
        self.client = client
        self.case_type: type[CaseT] = case_type

    async def create(self, case: CaseT | Mapping[str, Any]) -> CaseT:
        """Create a case; the server fills ``guid`` and ``created`` when absent."""
        return await self.client.request(
            "POST", "/api/case", json=case, concept_type=self.case_type
        )

    async def update(self, case_guid: UUID | str, changes: CaseT | Mapping[str, Any]) -> CaseT:
        """Apply ``changes`` (a partial dict, or a whole case) and return the updated case."""
        return await self.client.request(
            "PUT",
            f"/api/case/{case_guid_str(case_guid)}",
            json=changes,
            concept_type=self.case_type,
        )

    async def delete(self, case_guid: UUID | str) -> None:
        await self.client.request("DELETE", f"/api/case/{case_guid_str(case_guid)}")

    async def retrieve(self, case_guid: UUID | str) -> CaseT:
        return await self.client.request(
            "GET", f"/api/case/{case_guid_str(case_guid)}", concept_type=self.case_type
        )

    async def enumerate(self) -> list[CaseT]:
        """Every case the caller may read."""
        return await self.client.request(
            "GET",
            "/api/cases",
            concept_type=list[self.case_type],  # type: ignore[name-defined]
        )

    async def attach(self, case_guid: UUID | str, next_case_guid: UUID | str) -> CaseT:
        """Move a case under ``next_case_guid`` (federation key only)."""
        return await self.client.request(
            "PUT",
            f"/api/case/{case_guid_str(case_guid)}/attach/{case_guid_str(next_case_guid)}",
            concept_type=self.case_type,
        )


class FusionConstantAPIClient(Generic[ConstantT]):
    """``/api/constant``, decoded into ``constant_type`` (a service's Constant subclass)."""

    @overload
    def __init__(self: FusionConstantAPIClient[Constant], client: FusionClient) -> None: ...

    @overload
    def __init__(self, client: FusionClient, constant_type: type[ConstantT]) -> None: ...

    def __init__(self, client: FusionClient, constant_type: type[Any] = Constant) -> None:
        self.client = client
        self.constant_type: type[ConstantT] = constant_type

    async def constant(self) -> ConstantT:
        return await self.client.request("GET", "/api/constant", concept_type=self.constant_type)


class FusionInfoAPIClient:
    """``/api/info``: which API and version a service runs."""

    def __init__(self, client: FusionClient) -> None:
        self.client = client

    async def info(self) -> Info:
        return await self.client.request("GET", "/api/info", concept_type=Info)
