"""The constant API (reload, broken edit, missing file) and the info API."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    HTTPSessionFactory,
    RunningServer,
    ServerFactory,
    call,
    server_config,
)

from fusion.concept import Constant
from fusion.server import FusionServer


class BannerConstant(Constant, kw_only=True):
    """A service constant with a field of its own."""

    retention_days: int = 30


@pytest.fixture
async def server(tmp_path: Path, fusion_server: ServerFactory) -> RunningServer:
    config = server_config(tmp_path)
    return await fusion_server(FusionServer(config, constant_type=BannerConstant))


def _write(path: Path, text: str) -> None:
    # A new file renamed over the old one, like editors and config managers do;
    # the inode changes even when size and mtime would not.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_constant_is_503_until_the_file_exists_then_follows_it(
    tmp_path: Path, server: RunningServer, http_sessions: HTTPSessionFactory
) -> None:
    session = http_sessions(server.url)
    status, envelope = await call(session, "GET", "/api/constant")
    assert (status, envelope) == (503, {"status": 503, "message": "constant not available"})
    constant_file = tmp_path / "constant.yml"
    _write(constant_file, "banner: hello\nretention_days: 7\n")
    status, envelope = await call(session, "GET", "/api/constant")
    assert status == 200
    assert envelope == {
        "status": 200,
        "count": 3,
        "data": {"banner": "hello", "allow_empty_acs": True, "retention_days": 7},
    }
    _write(constant_file, "banner: changed\n")
    status, envelope = await call(session, "GET", "/api/constant")
    assert envelope["data"] == {"banner": "changed", "allow_empty_acs": True, "retention_days": 30}
    constant_file.unlink()
    assert (await call(session, "GET", "/api/constant"))[0] == 503


async def test_broken_edit_keeps_the_last_good_constant(
    tmp_path: Path,
    server: RunningServer,
    http_sessions: HTTPSessionFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = http_sessions(server.url)
    constant_file = tmp_path / "constant.yml"
    _write(constant_file, "banner: good\n")
    assert (await call(session, "GET", "/api/constant"))[1]["data"]["banner"] == "good"
    with caplog.at_level(logging.ERROR, logger="fusion.server.constant"):
        for broken in ("banner: [unclosed\n", "retention_days: many\n", "- a list\n"):
            _write(constant_file, broken)
            status, envelope = await call(session, "GET", "/api/constant")
            assert (status, envelope["data"]["banner"]) == (200, "good")
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 3
    assert "keeping the previous constant" in errors[0].getMessage()
    _write(constant_file, "banner: fixed\n")
    assert (await call(session, "GET", "/api/constant"))[1]["data"]["banner"] == "fixed"


async def test_reload_checks_are_throttled(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    constant_file = tmp_path / "constant.yml"
    _write(constant_file, "banner: first\n")
    config = server_config(tmp_path, constant={"reload_interval": 3600})
    server = await fusion_server(config)
    session = http_sessions(server.url)
    assert (await call(session, "GET", "/api/constant"))[1]["data"]["banner"] == "first"
    _write(constant_file, "banner: second\n")
    # Within the interval the file is not looked at again.
    assert (await call(session, "GET", "/api/constant"))[1]["data"]["banner"] == "first"


async def test_constant_and_info_may_require_authentication(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    (tmp_path / "constant.yml").write_text("banner: secret\n")
    config = server_config(tmp_path, constant={"require_auth": True}, info={"require_auth": True})
    server = await fusion_server(config)
    anonymous = http_sessions(server.url)
    robot = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    for path in ("/api/constant", "/api/info"):
        assert (await call(anonymous, "GET", path))[0] == 401
        assert (await call(robot, "GET", path))[0] == 200


async def test_info(server: RunningServer, http_sessions: HTTPSessionFactory) -> None:
    status, envelope = await call(http_sessions(server.url), "GET", "/api/info")
    assert (status, envelope) == (
        200,
        {"status": 200, "count": 2, "data": {"api": "fusion-test", "version": "1.2.3"}},
    )


async def test_disabled_apis_are_not_served(
    tmp_path: Path, fusion_server: ServerFactory, http_sessions: HTTPSessionFactory
) -> None:
    config = server_config(tmp_path, info=None, constant=None, case=None)
    server = await fusion_server(config)
    session = http_sessions(server.url, headers={"X-Fusion-API-Token": ROBOT_KEY})
    for path in ("/api/info", "/api/constant", "/api/cases"):
        status, envelope = await call(session, "GET", path)
        assert (status, envelope["status"]) == (404, 404)
    assert (await call(session, "GET", "/api/auth/is_logged"))[0] == 200
