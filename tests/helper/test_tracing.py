"""fusion.helper.tracing: the audit records emitted on ``fusion.audit``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from fusion.concept import Identity, utcnow
from fusion.helper.logging import FusionFormatter, JsonFormatter, TextFormatter
from fusion.helper.tracing import AUDIT_LOGGER, AuditRecord, AuditTrail, trace_user_op

GUID = UUID("0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d11")


def _audit(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fusion.audit"]


def test_granted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fusion.audit")
    identity = Identity(username="alice", groups=frozenset({"dfir"}))
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


# -- AuditTrail: granted decisions batched per loop iteration ----------------------


@pytest.fixture
def audit_file(tmp_path: Path) -> Iterator[tuple[logging.Logger, Path, logging.FileHandler]]:
    """A private audit logger (not propagating: pytest's handlers stay out) to a file."""
    logger = logging.getLogger(f"fusion.audit.test{id(tmp_path)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    path = tmp_path / "audit.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    logger.addHandler(handler)
    yield logger, path, handler
    logger.removeHandler(handler)
    handler.close()


def _slow_lines(trail: AuditTrail, entries: list[Any], formatter: logging.Formatter) -> list[str]:
    return [formatter.format(trail._record(entry)) for entry in entries]


@pytest.mark.parametrize("formatter_type", [TextFormatter, JsonFormatter])
async def test_trail_writes_once_per_iteration_what_logging_would(
    audit_file: tuple[logging.Logger, Path, logging.FileHandler],
    formatter_type: type[FusionFormatter],
) -> None:
    logger, path, handler = audit_file
    handler.setFormatter(formatter_type())
    trail = AuditTrail(logger)
    trail.granted("alice", "retrieve_case", case_guid=GUID, client_ip="192.0.2.1")
    trail.granted("robot", "enumerate_cases", context={"page": 2})
    entries = list(trail._pending)
    assert path.read_text() == ""  # nothing written before the iteration ends
    await asyncio.sleep(0)
    written = path.read_text().splitlines()
    # Byte for byte what one LogRecord per decision would have given.
    assert written == _slow_lines(trail, entries, formatter_type())
    if formatter_type is TextFormatter:
        assert written[0].endswith(
            f" INFO {logger.name}: granted retrieve_case to alice case={GUID} ip=192.0.2.1"
        )
        assert written[1].endswith("granted enumerate_cases to robot case=- ip=-")
    else:
        first, second = (json.loads(line) for line in written)
        assert first["audit"]["who"] == "alice"
        assert first["audit"]["case_guid"] == str(GUID)
        assert first["level"] == "INFO"
        assert second["audit"]["context"] == {"page": 2}
        assert second["audit"]["client_ip"] is None
    # Each line carries the time of its decision, not of the write.
    assert (
        json.loads(JsonFormatter().format(trail._record(entries[0])))["audit"]["time"]
        == datetime.fromtimestamp(entries[0][0], UTC).isoformat()
    )


async def test_trail_denied_flushes_first_and_keeps_order(
    audit_file: tuple[logging.Logger, Path, logging.FileHandler],
) -> None:
    logger, path, handler = audit_file
    handler.setFormatter(TextFormatter())
    trail = AuditTrail(logger)
    trail.granted("alice", "retrieve_case", case_guid=GUID)
    trail.denied("mallory", "delete_case", case_guid=GUID, context={"reason": "acs"})
    trail.granted("alice", "update_case", case_guid=GUID)
    await asyncio.sleep(0)
    lines = path.read_text().splitlines()
    assert " WARNING " in lines[1]
    messages = [line.split(": ", 1)[1] for line in lines]
    assert messages == [
        f"granted retrieve_case to alice case={GUID} ip=-",
        f"denied delete_case to mallory case={GUID} ip=-",
        f"granted update_case to alice case={GUID} ip=-",
    ]


async def test_trail_batch_cap_and_explicit_flush(
    audit_file: tuple[logging.Logger, Path, logging.FileHandler],
) -> None:
    logger, path, handler = audit_file
    handler.setFormatter(TextFormatter())
    trail = AuditTrail(logger, max_batch=3)
    for index in range(4):
        trail.granted(f"user{index}", "retrieve_case")
    assert len(path.read_text().splitlines()) == 3  # the cap wrote the first three
    trail.flush()
    assert len(path.read_text().splitlines()) == 4
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert len(path.read_text().splitlines()) == 4


def test_trail_without_loop_writes_at_once(
    audit_file: tuple[logging.Logger, Path, logging.FileHandler],
) -> None:
    logger, path, handler = audit_file
    handler.setFormatter(TextFormatter())
    AuditTrail(logger).granted("alice", "login")
    assert path.read_text().endswith("granted login to alice case=- ip=-\n")


async def test_trail_through_other_handlers_is_one_record_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pytest's handler is no Fusion stream handler: records as trace_user_op makes them."""
    caplog.set_level(logging.INFO, logger="fusion.audit")
    trail = AuditTrail()
    before = time.time()
    trail.granted("alice", "retrieve_case", case_guid=GUID, client_ip="192.0.2.1")
    trail.granted("bob", "retrieve_case", case_guid=GUID)
    await asyncio.sleep(0)
    first, second = _audit(caplog)
    assert first.getMessage() == f"granted retrieve_case to alice case={GUID} ip=192.0.2.1"
    assert first.levelno == logging.INFO
    assert before <= first.created <= second.created <= time.time()
    assert first.audit["who"] == "alice"  # type: ignore[attr-defined]
    assert first.audit["granted"] is True  # type: ignore[attr-defined]
    assert second.audit["client_ip"] is None  # type: ignore[attr-defined]


async def test_trail_is_silent_when_info_is_off(
    audit_file: tuple[logging.Logger, Path, logging.FileHandler],
) -> None:
    logger, path, handler = audit_file
    handler.setFormatter(TextFormatter())
    logger.setLevel(logging.WARNING)
    trail = AuditTrail(logger)
    trail.granted("alice", "retrieve_case")
    assert trail._pending == []
    await asyncio.sleep(0)
    assert path.read_text() == ""
