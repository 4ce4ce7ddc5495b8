"""Audit records of access decisions, and the server while Redis is away."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    ServerFactory,
    audit_records,
    call,
    login,
    server_config,
)
from fusion_testing.redis import RedisServer


async def test_every_decision_is_audited(
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await fusion_server(server_config(tmp_path))
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    alice = http_sessions(server.url)
    with caplog.at_level(logging.INFO, logger="fusion.audit"):
        await login(alice, "alice", "wrong")
        await login(alice, "alice")
        _, envelope = await call(
            robot, "POST", "/api/case", json={"name": "audited", "acs": ["robots"]}
        )
        case_guid = envelope["data"]["guid"]
        await call(robot, "GET", f"/api/case/{case_guid}")
        await call(alice, "GET", f"/api/case/{case_guid}")
        await call(alice, "DELETE", f"/api/case/{case_guid}")
    audits = audit_records(caplog)
    summary = [(a["who"], a["action"], a["granted"], a["case_guid"]) for a in audits]
    assert summary == [
        ("alice", "login", False, None),
        ("alice", "login", True, None),
        ("robot", "create_case", True, None),
        ("robot", "retrieve_case", True, case_guid),
        ("alice", "retrieve_case", False, case_guid),
        ("alice", "delete_case", False, case_guid),
    ]
    assert all(a["client_ip"] == "127.0.0.1" for a in audits)
    assert audits[0]["context"] == {"reason": "login refused"}
    assert audits[4]["context"] == {"reason": "access to this case denied"}
    refused = [r for r in caplog.records if r.name == "fusion.audit" and not r.audit["granted"]]  # type: ignore[attr-defined]
    assert {record.levelno for record in refused} == {logging.WARNING}


async def test_trusted_proxy_address_is_the_audited_client(
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = server_config(tmp_path, server={"trusted_proxies": ["127.0.0.0/8"]})
    server = await fusion_server(config)
    session = http_sessions(server.url)
    with caplog.at_level(logging.INFO, logger="fusion.audit"):
        await login(session, "alice", "wrong")
        await call(
            session,
            "POST",
            "/api/auth/login",
            json={"data": {"username": "alice", "password": "wrong"}},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
    assert [a["client_ip"] for a in audit_records(caplog)] == ["127.0.0.1", "203.0.113.9"]


@pytest.mark.redis
async def test_redis_outage_is_503_and_recovers(
    tmp_path: Path,
    private_redis_server: RedisServer,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    config = server_config(tmp_path, shared_store={"url": private_redis_server.url})
    server = await fusion_server(config)
    alice = http_sessions(server.url)
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    assert (await login(alice, "alice"))[0] == 200
    status, envelope = await call(robot, "POST", "/api/case", json={"name": "survives"})
    case_guid = envelope["data"]["guid"]

    private_redis_server.kill()
    for session, method, path in (
        (alice, "GET", "/api/auth/is_logged"),
        (alice, "GET", "/api/cases"),
        (alice, "GET", "/api/auth/logout"),
    ):
        status, envelope = await call(session, method, path)
        assert (path, status, envelope) == (
            path,
            503,
            {"status": 503, "message": "shared store unavailable"},
        )
    status, envelope = await login(http_sessions(server.url), "bob")
    assert (status, envelope["status"]) == (503, 503)
    # What does not need the store keeps working: API keys and the storage.
    status, envelope = await call(robot, "GET", f"/api/case/{case_guid}")
    assert (status, envelope["data"]["name"]) == (200, "survives")
    assert (await call(robot, "GET", "/api/info"))[0] == 200

    private_redis_server.start()
    # Sessions were in the Redis that died (no persistence): log in again.
    assert (await call(alice, "GET", "/api/auth/is_logged"))[0] == 401
    assert (await login(alice, "alice"))[0] == 200
    assert (await call(alice, "GET", "/api/auth/is_logged"))[0] == 200
