"""CORS over real sockets: preflights from an allowed origin and from another one,
credentialed requests, a streamed answer, and nothing at all when it is off."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    ServerFactory,
    call,
    login,
    server_config,
)

from fusion.server.config import ConfigError

APP = "https://app.example.org"
OTHER = "https://evil.example.net"
CORS = {"allow_origins": [APP, "http://localhost:3000"], "allow_credentials": True}


def _cors_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("access-control-")}


async def _url(fusion_server: ServerFactory, tmp_path: Path, **sections: Any) -> str:
    running = await fusion_server(server_config(tmp_path, event={}, **sections))
    return running.url


async def test_preflight_from_an_allowed_origin(
    fusion_server: ServerFactory, http_sessions: HTTPSessionFactory, tmp_path: Path
) -> None:
    session = http_sessions(await _url(fusion_server, tmp_path, cors=CORS))
    # A route that has no OPTIONS of its own, asked with the headers a page sends.
    async with session.options(
        "/api/case/0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d11",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type, x-fusion-api-token",
        },
    ) as response:
        assert response.status == 204
        assert _cors_headers(response.headers) == {
            "access-control-allow-origin": APP,
            "access-control-allow-credentials": "true",
            "access-control-allow-methods": "GET, POST, PUT, DELETE",
            "access-control-allow-headers": (
                "Authorization, Content-Type, If-Match, Last-Event-ID, "
                "X-Fusion-API-Token, X-Request-ID"
            ),
            "access-control-max-age": "600",
        }
        assert "Origin" in response.headers["Vary"]


@pytest.mark.parametrize(
    ("origin", "method", "asked", "reason"),
    [
        (OTHER, "GET", "", "origin not allowed"),
        ("https://app.example.org.evil.example.net", "GET", "", "origin not allowed"),
        (APP, "PATCH", "", "method not allowed"),
        (APP, "GET", "x-secret-header", "request header not allowed"),
    ],
)
async def test_refused_preflights_get_no_cors_headers(
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    tmp_path: Path,
    origin: str,
    method: str,
    asked: str,
    reason: str,
) -> None:
    session = http_sessions(await _url(fusion_server, tmp_path, cors=CORS))
    headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if asked:
        headers["Access-Control-Request-Headers"] = asked
    async with session.options("/api/cases", headers=headers) as response:
        assert response.status == 403
        assert await response.json() == {"status": 403, "message": f"CORS: {reason}"}
        assert _cors_headers(response.headers) == {}


async def test_credentialed_requests_from_the_allowed_origin_only(
    fusion_server: ServerFactory, http_sessions: HTTPSessionFactory, tmp_path: Path
) -> None:
    session = http_sessions(await _url(fusion_server, tmp_path, cors=CORS))
    assert (await login(session, "alice"))[0] == 200
    async with session.get("/api/auth/is_logged", headers={"Origin": APP}) as response:
        assert response.status == 200
        assert (await response.json())["data"]["username"] == "alice"
        assert _cors_headers(response.headers) == {
            "access-control-allow-origin": APP,
            "access-control-allow-credentials": "true",
            "access-control-expose-headers": "X-Request-ID",
        }
        assert "Origin" in response.headers["Vary"]
    # Errors too: a page must be able to read the envelope's message.
    async with session.get("/api/case/not-a-guid", headers={"Origin": APP}) as response:
        assert response.status == 400
        assert response.headers["Access-Control-Allow-Origin"] == APP
    # Another origin's page gets the answer the server always gave, which its
    # browser does not let it read.
    async with session.get("/api/auth/is_logged", headers={"Origin": OTHER}) as response:
        assert response.status == 200
        assert _cors_headers(response.headers) == {}


async def test_event_stream_carries_the_headers(
    fusion_server: ServerFactory, http_sessions: HTTPSessionFactory, tmp_path: Path
) -> None:
    """Streamed answers are prepared inside their handler: they get the headers too."""
    robot = http_sessions(
        await _url(fusion_server, tmp_path, cors=CORS), headers={"X-Fusion-API-Token": ROBOT_KEY}
    )
    status, body = await call(robot, "POST", "/api/case", json={"name": "cors"})
    assert status == 200, body
    guid = body["data"]["guid"]
    async with robot.get(f"/api/events/case/{guid}", headers={"Origin": APP}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert response.headers["Access-Control-Allow-Credentials"] == "true"


async def test_off_by_default(
    fusion_server: ServerFactory, http_sessions: HTTPSessionFactory, tmp_path: Path
) -> None:
    session = http_sessions(await _url(fusion_server, tmp_path))
    headers = {"Origin": APP, "Access-Control-Request-Method": "GET"}
    async with session.options("/api/cases", headers=headers) as response:
        assert response.status == 405
        assert _cors_headers(response.headers) == {}
    assert (await login(session, "alice"))[0] == 200
    async with session.get("/api/auth/is_logged", headers={"Origin": APP}) as response:
        assert response.status == 200
        assert _cors_headers(response.headers) == {}
        assert "Vary" not in response.headers or "Origin" not in response.headers["Vary"]


async def test_any_origin_without_credentials_answers_star(
    fusion_server: ServerFactory, http_sessions: HTTPSessionFactory, tmp_path: Path
) -> None:
    session = http_sessions(await _url(fusion_server, tmp_path, cors={"allow_origins": ["*"]}))
    async with session.get("/api/info", headers={"Origin": OTHER}) as response:
        assert response.status == 200
        assert _cors_headers(response.headers) == {
            "access-control-allow-origin": "*",
            "access-control-expose-headers": "X-Request-ID",
        }


@pytest.mark.parametrize(
    ("cors", "message"),
    [
        ({"allow_origins": ["https://app.example.org/"]}, "cors.allow_origins[0]: "),
        ({"allow_origins": ["app.example.org"]}, "cors.allow_origins[0]: "),
        ({"allow_origins": []}, "cors.allow_origins: "),
        ({"allow_origins": ["*"], "allow_credentials": True}, "cors.allow_origins: '*' with"),
        ({"allow_origins": [APP], "allow_headers": ["bad header"]}, "cors.allow_headers[0]: "),
    ],
)
def test_bad_configurations_name_the_key(
    tmp_path: Path, cors: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        server_config(tmp_path, cors=cors)
    assert message in str(raised.value)
