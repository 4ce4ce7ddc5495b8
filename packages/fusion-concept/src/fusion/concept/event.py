"""Events sent to subscribers and webhooks."""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

import msgspec

from fusion.concept._concept import DECODE_ERRORS, Concept, ConceptError, json_decoder
from fusion.concept.case import Case

__all__ = ["CaseT", "Event"]

CaseT = TypeVar("CaseT", bound=Case)


def _event_type(case_type: type[Case]) -> Any:
    # Event parametrised at run time by the service's Case subclass.
    return cast(Any, Event)[case_type]


class Event(Concept, Generic[CaseT], kw_only=True):
    """``{"source", "category", "case", "ext"}``.

    Decode with ``Event.from_json(data, case_type=TimelineCase)`` to get the
    service's Case subclass back; the default decodes the case as
    :class:`Case`.
    """

    source: str
    category: str
    case: CaseT
    ext: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: bytes | str, case_type: type[Case] = Case) -> Event[Any]:
        try:
            return json_decoder(_event_type(case_type)).decode(data)  # type: ignore[no-any-return]
        except DECODE_ERRORS as exc:
            raise ConceptError(f"invalid Event: {exc}") from exc

    @classmethod
    def from_dict(cls, dct: Any, case_type: type[Case] = Case) -> Event[Any]:
        try:
            return msgspec.convert(dct, _event_type(case_type))  # type: ignore[no-any-return]
        except (msgspec.ValidationError, RecursionError) as exc:
            raise ConceptError(f"invalid Event: {exc}") from exc
