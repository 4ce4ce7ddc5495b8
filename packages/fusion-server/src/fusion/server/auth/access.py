"""Access control: what an identity may do with a case."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fusion.concept import Case, Identity

__all__ = ["Access", "Action", "can_access_case", "can_delete", "closed_case_refusal"]


class Access(Enum):
    """What a caller may do with a case it can see."""

    READ = "read"
    CHANGE = "change"


@dataclass(frozen=True, slots=True)
class Action:
    """An operation to authorize: its name (for the audit log) and what it needs.

    ``change`` needs change access to the case; ``delete`` also needs the
    delete right; ``federation`` is reserved to the federation key. ``context``
    carries what a service's ``authorize_impl`` hook wants to look at (and what
    the audit record shows). A change action on a closed case is refused
    (:func:`closed_case_refusal`) unless it is ``allow_closed``: the case API
    sets it for deleting a case and for the update that reopens it.
    """

    name: str
    change: bool = False
    delete: bool = False
    federation: bool = False
    context: dict[str, Any] = field(default_factory=dict)
    allow_closed: bool = False


def can_access_case(identity: Identity, case: Case) -> Access | None:
    """Access of ``identity`` to ``case`` (None: it may not see the case at all).

    The older servers' rule, never more permissive: a caller in ``acs_ro`` may
    only read, even when it is in ``acs`` too (so an operator demotes one member
    of a group by listing that member in ``acs_ro``); otherwise it may change the
    case when ``acs`` is empty or the caller is in it; otherwise no access.
    """
    acs = identity.acs
    if not acs.isdisjoint(case.acs_ro):
        return Access.READ
    if not case.acs or not acs.isdisjoint(case.acs):
        return Access.CHANGE
    return None


def can_delete(identity: Identity, allowed: Collection[str]) -> bool:
    """True when the identity's username or one of its groups is in ``allowed``."""
    return not identity.acs.isdisjoint(allowed)


def closed_case_refusal(action: Action, case: Case) -> str | None:
    """Why ``action`` may not run on ``case`` because the case is closed (None: it may).

    Every caller, the federation key included, must reopen a closed case
    (``"closed": null``) before changing it; reading it, deleting it and
    actions marked ``allow_closed`` are not concerned.
    """
    if case.closed is None or not action.change or action.allow_closed:
        return None
    return f'case {case.guid} is closed: reopen it with "closed": null first'
