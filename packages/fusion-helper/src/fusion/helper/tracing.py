"""The audit trail: one structured line per access decision, on ``fusion.audit``.

Each decision is logged at INFO (granted) or WARNING (refused) with the message
``"granted case.read to alice case=<guid> ip=<addr>"`` and the record's ``audit``
attribute (from ``extra=``) holding the JSON-compatible :class:`AuditRecord`
fields, which the JSON log format writes as one object.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from fusion.concept import Identity, utcnow

__all__ = ["AUDIT_LOGGER", "AuditRecord", "trace_user_op"]

AUDIT_LOGGER = logging.getLogger("fusion.audit")


class AuditRecord(msgspec.Struct, kw_only=True):
    """Who tried what, on which case, from where, and whether it was allowed."""

    time: datetime
    who: str
    action: str
    granted: bool
    case_guid: UUID | None = None
    client_ip: str | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible fields (built by hand: this runs on every request)."""
        return {
            "time": self.time.isoformat(),
            "who": self.who,
            "action": self.action,
            "granted": self.granted,
            "case_guid": None if self.case_guid is None else str(self.case_guid),
            "client_ip": self.client_ip,
            "context": self.context,
        }


def trace_user_op(
    identity_or_username: Identity | str,
    action: str,
    *,
    granted: bool,
    case_guid: UUID | str | None = None,
    client_ip: str | None = None,
    context: dict[str, Any] | None = None,
) -> AuditRecord:
    """Record one access decision on the ``fusion.audit`` logger and return it."""
    who = (
        identity_or_username.username
        if isinstance(identity_or_username, Identity)
        else identity_or_username
    )
    if isinstance(case_guid, str):
        case_guid = UUID(case_guid)
    record = AuditRecord(
        time=utcnow(),
        who=who,
        action=action,
        granted=granted,
        case_guid=case_guid,
        client_ip=client_ip,
        context=context or {},
    )
    level = logging.INFO if granted else logging.WARNING
    if AUDIT_LOGGER.isEnabledFor(level):
        AUDIT_LOGGER.log(
            level,
            "%s %s to %s case=%s ip=%s",
            "granted" if granted else "denied",
            action,
            who,
            case_guid or "-",
            client_ip or "-",
            extra={"audit": record.to_dict()},
        )
    return record
