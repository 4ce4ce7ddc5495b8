"""fusion.helper.tracing: the audit records emitted on ``fusion.audit``."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import msgspec
import pytest

from fusion.concept import Identity, utcnow
from fusion.helper.logging import JsonFormatter, setup_logging
from fusion.helper.tracing import AUDIT_LOGGER, AuditRecord, trace_user_op

GUID = UUID("0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d11")


def _audit(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fusion.audit"]


def test_granted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fusion.audit")
    identity = Identity(username="alice", groups=frozenset({"dfir"}))
    trace_user_op(identity, "case.read", granted=True, case_guid=GUID, client_ip="192.0.2.1")
    (logged,) = _audit(caplog)
    when = datetime.fromtimestamp(logged.created, UTC)
    assert abs(utcnow() - when) < timedelta(seconds=5)
    assert logged.levelno == logging.INFO
    assert logged.getMessage() == f"granted case.read to alice case={GUID} ip=192.0.2.1"
    audit = logged.audit  # type: ignore[attr-defined]
    assert audit == {
        "time": when.isoformat(),
        "who": "alice",
        "action": "case.read",
        "granted": True,
        "case_guid": str(GUID),
        "client_ip": "192.0.2.1",
        "context": {},
    }
    json.dumps(audit)  # JSON-serialisable as is
    # The typed view of those fields.
    typed = msgspec.convert(audit, AuditRecord)
    assert (typed.time, typed.case_guid, typed.context) == (when, GUID, {})
    assert typed.to_dict() == audit


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


def test_disabled_logger_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="fusion.audit")
    trace_user_op("alice", "case.read", granted=True)
    trace_user_op("alice", "case.delete", granted=False)
    assert _audit(caplog) == []
    assert AUDIT_LOGGER.name == "fusion.audit"


def test_invalid_guid_text(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fusion.audit")
    with pytest.raises(ValueError, match="badly formed"):
        trace_user_op("alice", "case.read", granted=True, case_guid="nope")


# -- through the handlers setup_logging installs, and handlers of one's own --------


@pytest.mark.usefixtures("restore_root_logger")
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_decisions_in_order_with_their_levels(tmp_path: Path, log_format: str) -> None:
    path = tmp_path / "audit.log"
    handler = setup_logging(level="INFO", json=log_format == "json", filepath=path)
    before = time.time()
    trace_user_op("alice", "retrieve_case", granted=True, case_guid=GUID, client_ip="192.0.2.1")
    trace_user_op("mallory", "delete_case", granted=False, case_guid=GUID, context={"r": "acs"})
    trace_user_op("robot", "enumerate_cases", granted=True, context={"page": 2})
    handler.flush()
    after = time.time()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    if log_format == "text":
        assert [line.split(" ", 1)[1] for line in lines] == [
            f"INFO fusion.audit: granted retrieve_case to alice case={GUID} ip=192.0.2.1",
            f"WARNING fusion.audit: denied delete_case to mallory case={GUID} ip=-",
            "INFO fusion.audit: granted enumerate_cases to robot case=- ip=-",
        ]
        return
    first, second, third = (json.loads(line) for line in lines)
    assert [entry["level"] for entry in (first, second, third)] == ["INFO", "WARNING", "INFO"]
    assert first["audit"] == {
        "time": first["audit"]["time"],
        "who": "alice",
        "action": "retrieve_case",
        "granted": True,
        "case_guid": str(GUID),
        "client_ip": "192.0.2.1",
        "context": {},
    }
    assert second["audit"]["granted"] is False
    assert second["audit"]["context"] == {"r": "acs"}
    assert third["audit"]["context"] == {"page": 2}
    assert third["audit"]["client_ip"] is None
    # Each line carries the time of its decision: the record's, to the microsecond.
    times = [datetime.fromisoformat(entry["audit"]["time"]) for entry in (first, second, third)]
    assert times == sorted(times)
    # (to the microsecond: rounding may take it below the float time it came from)
    assert before - 1e-6 <= times[0].timestamp()
    assert times[-1].timestamp() <= after + 1e-6
    assert first["time"] == times[0].isoformat(timespec="milliseconds")


def test_a_handler_of_ones_own_gets_every_record(tmp_path: Path) -> None:
    """Any handler on fusion.audit works as usual: LogRecords with the ``audit`` field."""
    path = tmp_path / "own.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s|%(name)s|%(message)s|%(audit)s"))
    AUDIT_LOGGER.addHandler(handler)
    level = AUDIT_LOGGER.level
    AUDIT_LOGGER.setLevel(logging.INFO)
    try:
        trace_user_op("alice", "retrieve_case", granted=True, case_guid=GUID)
        trace_user_op("bob", "delete_case", granted=False)
    finally:
        AUDIT_LOGGER.removeHandler(handler)
        AUDIT_LOGGER.setLevel(level)
        handler.close()
    first, second = path.read_text(encoding="utf-8").splitlines()
    assert first.startswith(f"INFO|fusion.audit|granted retrieve_case to alice case={GUID} ip=-|{{")
    assert "'who': 'alice'" in first
    assert second.startswith("WARNING|fusion.audit|denied delete_case to bob case=- ip=-|{")


def test_nothing_is_built_for_a_level_nobody_listens_to(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fusion.audit")
    # Skipped at once: not even the case GUID is parsed for a granted decision.
    trace_user_op("alice", "retrieve_case", granted=True, case_guid="not a guid")
    trace_user_op("mallory", "delete_case", granted=False)
    (denied,) = _audit(caplog)
    assert denied.getMessage() == "denied delete_case to mallory case=- ip=-"
