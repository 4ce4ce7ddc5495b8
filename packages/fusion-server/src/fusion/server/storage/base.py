"""The persistence interface of a Fusion server: cases and the identities seen."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self
from uuid import UUID

from fusion.concept import Case, Identity

__all__ = ["CaseExistsError", "CaseNotFoundError", "FusionStorage"]


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


class FusionStorage(ABC):
    """Where a Fusion server keeps its cases and the identities it has seen.

    The framework ships :class:`~fusion.server.storage.SQLiteStorage`; a
    service subclasses it (or this class) to store more, or replaces it
    entirely. Every method is a coroutine and must never block the event loop.

    Returned cases belong to the caller: mutating one never changes what is
    stored until it is written back with :meth:`update_case`.
    """

    async def startup(self) -> None:
        """Open connections and create the schema (called once on app start)."""
        return None

    async def shutdown(self) -> None:
        """Release what :meth:`startup` opened."""
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
    async def create_case(self, case: Case) -> None:
        """Store a new case; :class:`CaseExistsError` when its GUID is taken."""

    @abstractmethod
    async def retrieve_case(self, case_guid: UUID) -> Case | None:
        """The case stored under ``case_guid``, or None."""

    async def retrieve_case_json(self, case_guid: UUID) -> bytes | None:
        """The case as JSON bytes, or None (lets the server answer without re-encoding).

        The default encodes :meth:`retrieve_case`; implementations that keep
        the JSON return it directly.
        """
        case = await self.retrieve_case(case_guid)
        return None if case is None else case.to_json()

    def cached_case_json(self, case_guid: UUID) -> bytes | None:
        """The case's JSON when the storage can answer at once, fresh, without I/O;
        None otherwise (then await :meth:`retrieve_case_json`). None by default."""
        return None

    @abstractmethod
    async def update_case(self, case: Case) -> None:
        """Replace the whole stored case; :class:`CaseNotFoundError` when absent."""

    @abstractmethod
    async def delete_case(self, case_guid: UUID) -> bool:
        """Delete a case; False when it was not stored."""

    @abstractmethod
    async def enumerate_cases(self) -> list[Case]:
        """Every stored case."""

    @abstractmethod
    async def attach_case(self, case_guid: UUID, next_case_guid: UUID) -> Case | None:
        """Move a case to ``next_case_guid`` (federation attach).

        The case is stored under ``next_case_guid`` and its old GUID is gone.
        Returns the moved case; None when ``case_guid`` is unknown;
        :class:`CaseExistsError` when ``next_case_guid`` is already taken.
        """

    # -- identities -----------------------------------------------------------
    @abstractmethod
    async def store_identity(self, identity: Identity) -> None:
        """Insert or update an identity by username (its groups are replaced)."""

    @abstractmethod
    async def enumerate_identities(self) -> list[Identity]:
        """Every identity seen so far, sorted by username."""
