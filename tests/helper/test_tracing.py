"""fusion.helper.tracing: the audit records emitted on ``fusion.audit``."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from uuid import UUID

import pytest

from fusion.concept import Identity, utcnow
from fusion.helper.logging import JsonFormatter
from fusion.helper.tracing import AUDIT_LOGGER, AuditRecord, trace_user_op

GUID = UUID("0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d11")


def _audit(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fusion.audit"]


def test_granted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fusion.audit")
    identity = Identity(username="alice", groups={"dfir"})
    record = trace_user_op(
        identity, "case.read", granted=True, case_guid=GUID, client_ip="192.0.2.1"
    )
    assert isinstance(record, AuditRecord)
    assert abs(utcnow() - record.time) < timedelta(seconds=5)
    (logged,) = _audit(caplog)
    assert logged.levelno == logging.INFO
    assert logged.getMessage() == f"granted case.read to alice case={GUID} ip=192.0.2.1"
    audit = logged.audit  # type: ignore[attr-defined]
    assert audit == {
        "time": record.time.isoformat(),
        "who": "alice",
        "action": "case.read",
        "granted": True,
        "case_guid": str(GUID),
        "client_ip": "192.0.2.1",
        "context": {},
    }
    json.dumps(audit)  # JSON-serialisable as is


def test_denied_with_context(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fusion.audit")
    trace_user_op(
        "mallory", "case.delete", granted=False, case_guid=str(GUID), context={"reason": "acs"}
    )
    trace_user_op("robot", "auth.login", granted=False)
    first, second = _audit(caplog)
    assert first.levelno == logging.WARNING
    assert first.getMessage() == f"denied case.delete to mallory case={GUID} ip=-"
    assert first.audit["context"] == {"reason": "acs"}  # type: ignore[attr-defined]
    assert first.audit["case_guid"] == str(GUID)  # type: ignore[attr-defined]
    assert second.getMessage() == "denied auth.login to robot case=- ip=-"
    assert second.audit["case_guid"] is None  # type: ignore[attr-defined]


def test_json_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fusion.audit")
    trace_user_op("alice", "case.update", granted=True, case_guid=GUID)
    (logged,) = _audit(caplog)
    line = json.loads(JsonFormatter().format(logged))
    assert line["logger"] == "fusion.audit"
    assert line["audit"]["who"] == "alice"
    assert line["audit"]["granted"] is True


def test_disabled_logger_still_returns_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="fusion.audit")
    record = trace_user_op("alice", "case.read", granted=True)
    assert record.who == "alice"
    assert _audit(caplog) == []
    assert AUDIT_LOGGER.name == "fusion.audit"


def test_invalid_guid_text() -> None:
    with pytest.raises(ValueError, match="badly formed"):
        trace_user_op("alice", "case.read", granted=True, case_guid="nope")
