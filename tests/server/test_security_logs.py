"""A ``fusion-server serve`` process logging to a file: hostile bytes never cost a line
nor forge one, and download tokens never reach the access log.

The requests are raw bytes on a loopback socket (headers a client library would
refuse to send), Bearer tokens from the test OpenID provider whose
``preferred_username`` holds a forged audit line, and download URLs. The log
file is read after a clean stop, in the text and the JSON format.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import secrets
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    ServerProcess,
    call,
    server_config_dict,
    write_config,
)
from fusion_testing.oidc_issuer import OIDCIssuer

REDACTED = "<redacted>"  # fusion.helper.tracing.REDACTED

# A whole audit line after a line feed: what the username tries to slip in.
FORGED = "2026-01-01T00:00:00.000Z INFO fusion.audit: granted delete_case to carol"
USERNAME = f"eve\n{FORGED}\r\u2028\u202e"
# obs-text bytes HTTP allows in a header value: not UTF-8 (0xff, 0xfe), NEL
# (U+0085, a line break to str.splitlines), LINE SEPARATOR (U+2028), and a tab.
HOSTILE_AGENT = b"probe-\xff\xfe-\xc2\x85-\xe2\x80\xa8-\tend"
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ [\w.]+: ")


def _unescape(text: str) -> str:
    return codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")


async def _raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` as is; the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        await writer.wait_closed()
    return answer.split(b"\r\n", 1)[0]


def _get(path: bytes, *headers: bytes) -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: 127.0.0.1", *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _run_server(tmp_path: Path, issuer: OIDCIssuer, log_format: str) -> dict[str, Any]:
    """Start a server logging to a file, send the hostile requests, stop it.

    Returns what the checks need: the log's bytes and the values sent.
    """
    config = server_config_dict(
        tmp_path,
        server={"access_log": True},
        auth={
            "backend": {
                "type": "oidc",
                "issuer": issuer.issuer,
                "client_id": issuer.client_id,
                "client_secret": issuer.client_secret,
                "redirect_uri": issuer.redirect_uri,
                "timeout": 5,
            }
        },
    )
    path = write_config(tmp_path / "server.yml", config)
    log = tmp_path / "server.log"
    process = ServerProcess(
        ["--config", str(path)],
        cwd=tmp_path,
        env={"FUSION_LOG_FILE": str(log), "FUSION_LOG_FORMAT": log_format},
    )
    # start() polls the port synchronously: off the loop, which serves the provider.
    await asyncio.to_thread(process.start)
    guid, token, hidden_token = str(uuid4()), secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    referer = f"http://127.0.0.1:{process.port}/api/download/{guid}/{token}".encode()
    try:
        port = process.port
        status = await _raw_request(
            port, _get(b"/api/auth/config", b"User-Agent: " + HOSTILE_AGENT, b"Referer: " + referer)
        )
        assert status == b"HTTP/1.1 200 OK", status
        status = await _raw_request(port, _get(f"/api/download/{guid}/{token}?x=1".encode()))
        assert status.startswith(b"HTTP/1.1 404"), status
        # The router matches the decoded path: this reaches the download route too.
        encoded = f"/api/%64ownload/{guid}/{hidden_token}".encode()
        status = await _raw_request(port, _get(encoded))
        assert status.startswith(b"HTTP/1.1 404"), status

        bearer = {"Authorization": "Bearer " + issuer.mint(issuer.claims(USERNAME, ["eve"]))}
        async with aiohttp.ClientSession(process.url) as session:
            # Granted: written by the audit trail's batch, at the end of the iteration.
            status_code, body = await call(
                session, "POST", "/api/case", json={"name": "eve's", "acs": ["eve"]}, headers=bearer
            )
            assert status_code == 200, body
            # Refused: written at once, through a LogRecord.
            robot = {"X-Fusion-API-Token": ROBOT_KEY}
            status_code, body = await call(
                session,
                "POST",
                "/api/case",
                json={"name": "robots'", "acs": ["robots"]},
                headers=robot,
            )
            assert status_code == 200, body
            denied_guid = body["data"]["guid"]
            status_code, body = await call(
                session, "GET", f"/api/case/{denied_guid}", headers=bearer
            )
            assert status_code in (403, 404), body
    finally:
        code = await asyncio.to_thread(process.stop)
    assert code == 0, process.output[-2000:]
    # A record the handler could not write is reported on stderr as a logging error.
    output = process.output.decode(errors="replace")
    assert "Logging error" not in output, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    return {
        "log": log.read_bytes(),
        "guid": guid,
        "tokens": (token, hidden_token),
        "denied_guid": denied_guid,
        "port": process.port,
    }


@pytest.mark.openapi_unchecked  # counts the access-log lines of its server process
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_hostile_bytes_and_download_tokens_in_the_log_file(
    tmp_path: Path, oidc_issuer: OIDCIssuer, log_format: str
) -> None:
    sent = await _run_server(tmp_path, oidc_issuer, log_format)
    raw: bytes = sent["log"]
    text = raw.decode("utf-8")  # strictly UTF-8: nothing written raw from the network
    for secret in sent["tokens"]:
        assert secret not in text
    lines = text.split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    # No NEL, U+2028, lone CR... anywhere: splitlines() sees the same lines.
    assert text.splitlines() == lines

    if log_format == "text":
        _check_text(lines, sent)
    else:
        _check_json(lines, sent)


def _check_text(lines: list[str], sent: dict[str, Any]) -> None:
    for line in lines:
        assert TEXT_LINE.match(line), line
        assert line.isprintable(), line
    access = [line for line in lines if " fusion.server.access: " in line]
    (health,) = (line for line in access if "GET /api/auth/config" in line)
    # Every byte is still there, readable and reversible.
    agent = HOSTILE_AGENT.decode("utf-8", "surrogateescape")
    assert "probe-\\udcff\\udcfe-\\x85-\\u2028-\\tend" in health
    assert agent in _unescape(health)
    guid = sent["guid"]
    assert f'"http://127.0.0.1:{sent["port"]}/api/download/{guid}/{REDACTED}"' in health
    # The request line, plain and percent-encoded (shown decoded, to be redacted).
    for request_line in (
        f'"GET /api/download/{guid}/{REDACTED}?x=1 HTTP/1.1" 404 ',
        f'"GET /api/download/{guid}/{REDACTED} HTTP/1.1" 404 ',
    ):
        assert len([line for line in access if request_line in line]) == 1, request_line

    audit = [line for line in lines if " fusion.audit: " in line]
    (granted,) = (
        line for line in audit if " INFO fusion.audit: granted create_case to eve" in line
    )
    (denied,) = (
        line for line in audit if "WARNING fusion.audit: denied retrieve_case to eve" in line
    )
    escaped = "eve\\n" + FORGED + "\\r\\u2028\\u202e"
    assert f"granted create_case to {escaped} case=" in granted
    assert f"denied retrieve_case to {escaped} case={sent['denied_guid']}" in denied
    assert USERNAME in _unescape(granted)
    # The forged text is inside those two lines, never a line of its own.
    assert [line for line in lines if FORGED in line] == [granted, denied]


def _check_json(lines: list[str], sent: dict[str, Any]) -> None:
    records = [json.loads(line) for line in lines]
    access = [record for record in records if record["logger"] == "fusion.server.access"]
    (health,) = (record for record in access if "GET /api/auth/config" in record["message"])
    # The undecodable bytes are escaped, the decodable ones kept as they are.
    agent = "probe-\\udcff\\udcfe-\x85-\u2028-\tend"
    assert health["request_header"]["User-Agent"] == agent
    guid = sent["guid"]
    referer = f"http://127.0.0.1:{sent['port']}/api/download/{guid}/{REDACTED}"
    assert health["request_header"]["Referer"] == referer
    request_lines = sorted(record["first_request_line"] for record in access)
    assert request_lines == sorted(
        [
            "GET /api/auth/config HTTP/1.1",
            f"GET /api/download/{guid}/{REDACTED}?x=1 HTTP/1.1",
            f"GET /api/download/{guid}/{REDACTED} HTTP/1.1",
            "POST /api/case HTTP/1.1",
            "POST /api/case HTTP/1.1",
            f"GET /api/case/{sent['denied_guid']} HTTP/1.1",
        ]
    )
    statuses = {
        record["response_status"] for record in access if "download" in record["first_request_line"]
    }
    assert statuses == {404}

    audit = [
        record
        for record in records
        if record["logger"] == "fusion.audit" and record["audit"]["who"].startswith("eve")
    ]
    (granted,) = (record for record in audit if record["audit"]["action"] == "create_case")
    (denied,) = (record for record in audit if record["audit"]["action"] == "retrieve_case")
    assert granted["audit"]["who"] == USERNAME  # exact: JSON strings carry it safely
    assert denied["audit"]["who"] == USERNAME
    assert denied["audit"]["granted"] is False
    assert denied["audit"]["case_guid"] == sent["denied_guid"]


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_sigterm_right_after_requests_loses_no_line(tmp_path: Path, log_format: str) -> None:
    """Lines are written by a thread off the event loop: a SIGTERM that comes right
    after the answers still finds every access and audit line in the file."""
    config = server_config_dict(tmp_path, server={"access_log": True})
    path = write_config(tmp_path / "server.yml", config)
    log = tmp_path / "server.log"
    process = ServerProcess(
        ["--config", str(path)],
        cwd=tmp_path,
        env={"FUSION_LOG_FILE": str(log), "FUSION_LOG_FORMAT": log_format},
    )
    await asyncio.to_thread(process.start)
    robot = {"X-Fusion-API-Token": ROBOT_KEY, "X-Request-ID": "bench-42"}
    reads = 300
    try:
        # Fewer connections than server.max_connections_per_address (64).
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(process.url, connector=connector) as session:
            status_code, body = await call(
                session, "POST", "/api/case", json={"name": "sig", "acs": ["robots"]}, headers=robot
            )
            assert status_code == 200, body
            guid = body["data"]["guid"]

            async def read(_: int) -> int:
                async with session.get(f"/api/case/{guid}", headers=robot) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(read(index) for index in range(reads)))
            assert set(statuses) == {200}
            status_code, _ = await call(session, "DELETE", f"/api/case/{guid}")
            assert status_code == 401
    finally:
        # At once: no waiting for the log to settle.
        code = await asyncio.to_thread(process.stop)
    assert code == 0, process.output[-2000:]
    lines = log.read_text(encoding="utf-8").splitlines()
    if log_format == "text":
        access = [line for line in lines if " INFO fusion.server.access: " in line]
        audit = [line for line in lines if " fusion.audit: " in line]
        read_line = f'"GET /api/case/{guid} HTTP/1.1" 200 '
        assert len([line for line in access if read_line in line]) == reads
        assert all(line.endswith(" id=bench-42") for line in access if read_line in line)
        granted = f"INFO fusion.audit: granted retrieve_case to robot case={guid} ip=127.0.0.1"
        assert len([line for line in audit if line.endswith(granted)]) == reads
        # The last request's lines, after all the others.
        assert '"DELETE /api/case/' in access[-1]
        assert " 401 " in access[-1]
    else:
        records = [json.loads(line) for line in lines]
        access_records = [r for r in records if r["logger"] == "fusion.server.access"]
        reads_logged = [
            r
            for r in access_records
            if r["first_request_line"] == f"GET /api/case/{guid} HTTP/1.1"
            and r["response_status"] == 200
        ]
        assert len(reads_logged) == reads
        assert {r["request_id"] for r in reads_logged} == {"bench-42"}
        assert all(r["request_time"] > 0 and r["response_size"] > 0 for r in reads_logged)
        audits = [r["audit"] for r in records if r["logger"] == "fusion.audit"]
        retrieved = [a for a in audits if a["action"] == "retrieve_case" and a["case_guid"] == guid]
        assert len(retrieved) == reads
        assert all(a["granted"] and a["who"] == "robot" for a in retrieved)
        assert access_records[-1]["first_request_line"].startswith("DELETE /api/case/")
