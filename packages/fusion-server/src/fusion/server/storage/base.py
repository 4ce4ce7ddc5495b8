"""The persistence interface of a Fusion server: cases and the identities seen."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Generic, NamedTuple, Self
from uuid import UUID

from typing_extensions import TypeVar

from fusion.concept import Case, Identity

__all__ = [
    "CaseConflictError",
    "CaseExistsError",
    "CaseNotFoundError",
    "FusionStorage",
    "VersionedCase",
]

CaseT_co = TypeVar("CaseT_co", bound=Case, covariant=True)
# Defaults to Case: SQLiteStorage(data_dir) stores plain cases.
CaseT = TypeVar("CaseT", bound=Case, default=Case)


class VersionedCase(NamedTuple, Generic[CaseT_co]):
    """A stored case and its version (1 when created, one more on every write)."""

    case: CaseT_co
    version: int


class CaseExistsError(ValueError):
    """A case with this GUID is already stored."""

    def __init__(self, case_guid: UUID) -> None:
        super().__init__(f"case {case_guid} already exists")
        self.case_guid = case_guid


class CaseNotFoundError(KeyError):
    """No case with this GUID is stored."""

    def __init__(self, case_guid: UUID) -> None:
        super().__init__(f"case {case_guid} not found")
        self.case_guid = case_guid

    def __str__(self) -> str:
        # KeyError.__str__ quotes its argument; the message reads better bare.
        return str(self.args[0])


class CaseConflictError(RuntimeError):
    """The stored case is no longer at the version a write expected.

    Someone else wrote (or deleted and re-created) it since it was read: read
    it again, re-apply the change and retry, or give up.
    """

    def __init__(self, case_guid: UUID, expected_version: int, stored_version: int) -> None:
        super().__init__(
            f"case {case_guid} changed: stored version {stored_version}, "
            f"expected {expected_version}"
        )
        self.case_guid = case_guid
        self.expected_version = expected_version
        self.stored_version = stored_version


class FusionStorage(ABC, Generic[CaseT]):
    """Where a Fusion server keeps its cases and the identities it has seen.

    The framework ships :class:`~fusion.server.storage.SQLiteStorage`; a
    service subclasses it (or this class) to store more, or replaces it
    entirely. Every method is a coroutine and must never block the event loop.

    Returned cases belong to the caller: mutating one never changes what is
    stored until it is written back with :meth:`update_case`.

    Every stored case has a version: 1 when created, one more on every write
    that changes it (update, attach). A read-modify-write is atomic across
    every process sharing the storage by compare-and-swap: read the case and
    its version with :meth:`retrieve_versioned_case`, change it, and write it
    with ``update_case(case, expected_version=version)``, which raises
    :class:`CaseConflictError` instead of writing when the stored version
    moved on (then read again and retry). :meth:`delete_case` takes the same
    ``expected_version``. Each check and write is one transaction of the
    backend (SQLite: ``BEGIN IMMEDIATE``; a server backend: ``UPDATE ...
    WHERE guid = $1 AND version = $2``).
    """

    async def startup(self) -> None:
        """Open connections and create the schema (called once on app start)."""
        return None

    async def shutdown(self) -> None:
        """Release what :meth:`startup` opened."""
        return None

    async def ready(self) -> None:
        """Raise when the storage cannot serve requests now (closed, unwritable,
        unreachable): ``GET /api/ready`` then answers 503. Cheap: probes call it
        every few seconds. The default checks nothing."""
        return None

    async def __aenter__(self) -> Self:
        await self.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    # -- cases --------------------------------------------------------------
    @abstractmethod
    async def create_case(self, case: CaseT) -> None:
        """Store a new case; :class:`CaseExistsError` when its GUID is taken."""

    @abstractmethod
    async def retrieve_versioned_case(self, case_guid: UUID) -> VersionedCase[CaseT] | None:
        """The case stored under ``case_guid`` with its version, or None."""

    async def retrieve_case(self, case_guid: UUID) -> CaseT | None:
        """The case stored under ``case_guid``, or None."""
        found = await self.retrieve_versioned_case(case_guid)
        return None if found is None else found.case

    @abstractmethod
    async def update_case(self, case: CaseT, *, expected_version: int | None = None) -> int:
        """Replace the whole stored case and return its new version.

        :class:`CaseNotFoundError` when absent; :class:`CaseConflictError`
        (nothing written) when ``expected_version`` is given and the stored
        version differs. Without ``expected_version`` the write is
        unconditional (the last writer wins).
        """

    @abstractmethod
    async def delete_case(self, case_guid: UUID, *, expected_version: int | None = None) -> bool:
        """Delete a case; False when it was not stored.

        :class:`CaseConflictError` (nothing deleted) when ``expected_version``
        is given and the stored version differs.
        """

    @abstractmethod
    async def enumerate_cases(self) -> list[CaseT]:
        """Every stored case."""

    @abstractmethod
    async def attach_case(self, case_guid: UUID, next_case_guid: UUID) -> CaseT | None:
        """Move a case to ``next_case_guid`` (federation attach).

        The case is stored under ``next_case_guid`` and its old GUID is gone;
        its version carries on (one more, as for any write). Returns the
        moved case; None when ``case_guid`` is unknown;
        :class:`CaseExistsError` when ``next_case_guid`` is already taken.
        """

    # -- identities -----------------------------------------------------------
    @abstractmethod
    async def store_identity(self, identity: Identity) -> None:
        """Insert or update an identity by username (its groups are replaced)."""

    @abstractmethod
    async def enumerate_identities(self) -> list[Identity]:
        """Every identity seen so far, sorted by username."""
