"""Cases: the unit of work every Fusion service shares."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar
from uuid import UUID, uuid4

import msgspec

from fusion.concept._concept import Concept, ConceptError, utcnow

__all__ = ["Case", "UTCDateTime"]

UTCDateTime = Annotated[datetime, msgspec.Meta(tz=True)]
"""A timezone-aware datetime (naive datetimes are refused on input)."""


class Case(Concept, kw_only=True):
    """A case, shared by services and federated by the hub.

    Update rules (PROTOCOL.md): ``guid``, ``managed`` and ``created`` never
    change; ``updated`` becomes now; a closed case that stays closed cannot be
    updated; ``"closed": null`` reopens it.
    """

    __immutable_fields__: ClassVar[frozenset[str]] = frozenset({"guid", "managed", "created"})

    guid: UUID = msgspec.field(default_factory=uuid4)
    managed: bool = False
    created: UTCDateTime = msgspec.field(default_factory=utcnow)
    updated: UTCDateTime | None = None
    closed: UTCDateTime | None = None
    tsid: str | None = None
    name: str = ""
    description: str = ""
    acs: set[str] = msgspec.field(default_factory=set)
    acs_ro: set[str] = msgspec.field(default_factory=set)
    webhooks: list[str] = msgspec.field(default_factory=list)

    @property
    def is_closed(self) -> bool:
        return self.closed is not None

    def _check_update(self, dct: dict[str, Any]) -> None:
        if self.closed is not None and dct.get("closed", self.closed) is not None:
            raise ConceptError(
                f'case {self.guid} is closed: reopen it with "closed": null to update it'
            )

    def _after_update(self) -> None:
        self.updated = utcnow()
