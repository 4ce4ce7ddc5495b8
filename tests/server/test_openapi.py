"""The OpenAPI 3.1 document at ``GET /api/openapi.json``.

It validates (openapi-spec-validator), it lists every route the router holds
(so it cannot miss one), every route is described by an ``@operation``, and
every answer of a real session over loopback sockets, which calls every route
with success and error answers (the tutorial service's own routes included),
matches the document: status declared, content type declared, and the JSON
body valid against the operation's schema.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from uuid import uuid4

import aiohttp
import msgspec
import pytest
from aiohttp import web
from fusion_testing.fixtures_openapi import record_answers
from fusion_testing.fixtures_server import (
    FEDERATION_KEY,
    HTTPSessionFactory,
    ServerFactory,
    login,
    server_config,
)
from fusion_testing.openapi_check import OpenAPIChecker
from openapi_spec_validator import validate

from fusion.concept import Concept
from fusion.helper.http_envelope import json_response
from fusion.server.app import FusionServer
from fusion.server.openapi import build_openapi, operation, operation_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def triage(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "triage_service", raising=False)
    return importlib.import_module("triage_service")


def _triage_server(triage: ModuleType, tmp_path: Path) -> FusionServer:
    samples = tmp_path / "samples"
    config = server_config(
        tmp_path,
        config_type=triage.TriageConfig,
        server={"max_body_size": 64 * 1024},
        event={},
        download={"roots": [str(samples)]},
        triage={"samples_dir": str(samples)},
    )
    server: FusionServer = triage.create_app(config)
    return server


def test_document_validates_and_describes_every_route(triage: ModuleType, tmp_path: Path) -> None:
    app = _triage_server(triage, tmp_path).build()
    document = build_openapi(app)
    validate(document)  # OpenAPI 3.1 (the version is read from the document)
    assert document["openapi"] == "3.1.0"
    routes = list(app.router.routes())
    assert len(routes) > 20
    for route in routes:
        template = route.resource.canonical  # type: ignore[union-attr]
        assert route.method.lower() in document["paths"][template], (route.method, template)
        assert operation_of(route.handler) is not None, f"{route.method} {template} undescribed"
    paths = document["paths"]
    # The service's own Case subclass, not the framework's, and its own routes.
    created = paths["/api/case"]["post"]["responses"]["200"]["content"]["application/json"]
    assert created["schema"]["properties"]["data"] == {"$ref": "#/components/schemas/TriageCase"}
    assert "severity" in document["components"]["schemas"]["TriageCase"]["properties"]
    upload = paths["/api/triage/{case_guid}/samples"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    events = paths["/api/events/case/{case_guid}"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    download = paths["/api/download/{guid}/{token}"]["get"]
    assert list(download["responses"]["200"]["content"]) == ["application/octet-stream"]
    assert download["security"] == []
    # Implied statuses: 401 where the configuration may require a login (auth
    # None), 415 for a body's unknown Content-Encoding; 422: a case hook refuses.
    assert "401" in paths["/api/info"]["get"]["responses"]
    assert {"400", "413", "415", "422"} <= set(paths["/api/case"]["post"]["responses"])
    assert paths["/api/openapi.json"]["get"]["security"] == []


def test_document_without_optional_apis_lists_only_enabled_routes(tmp_path: Path) -> None:
    app = FusionServer(server_config(tmp_path, case=None, constant=None)).build()
    document = build_openapi(app)
    validate(document)
    assert not any(path.startswith(("/api/case", "/api/events")) for path in document["paths"])
    assert "/api/constant" not in document["paths"]


async def test_every_answer_of_a_session_matches_the_document(
    triage: ModuleType,
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    running = await fusion_server(_triage_server(triage, tmp_path))
    anonymous = http_sessions(running.url)
    async with anonymous.get("/api/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        document = msgspec.json.decode(await response.read())
    validate(document)
    assert document == msgspec.json.decode(msgspec.json.encode(build_openapi(running.app)))
    checker = OpenAPIChecker(document)
    call = checker.call
    alice, bob = http_sessions(running.url), http_sessions(running.url)
    hub = http_sessions(running.url, headers={"X-Fusion-API-Token": FEDERATION_KEY})
    carol = http_sessions(running.url)

    assert (await call(anonymous, "GET", "/api/openapi.json"))[0] == 200
    assert (await call(anonymous, "GET", "/api/health"))[0] == 200
    assert (await call(anonymous, "GET", "/api/ready"))[0] == 200
    assert (await call(anonymous, "GET", "/api/auth/config"))[0] == 200
    assert (await call(anonymous, "POST", "/api/auth/login", json={"nope": 1}))[0] == 400
    for session, username in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        login_body = {"data": {"username": username, "password": f"{username}-password"}}
        assert (await call(session, "POST", "/api/auth/login", json=login_body))[0] == 200
    assert (await call(anonymous, "GET", "/api/auth/is_logged"))[0] == 401
    assert (await call(alice, "GET", "/api/auth/is_logged"))[0] == 200
    assert (await call(alice, "GET", "/api/auth/identities"))[0] == 200
    assert (await call(anonymous, "GET", "/api/info"))[0] == 200
    assert (await call(anonymous, "GET", "/api/constant"))[0] == 503
    (tmp_path / "constant.yml").write_text("banner: hello\n")
    assert (await call(anonymous, "GET", "/api/constant"))[0] == 200

    new_case = {"name": "c", "acs": ["analysts"], "acs_ro": ["readers"], "severity": 2}
    status, created = await call(alice, "POST", "/api/case", json=new_case)
    assert status == 200
    guid = created["data"]["guid"]
    assert (await call(anonymous, "POST", "/api/case", json=new_case))[0] == 401
    assert (await call(alice, "POST", "/api/case", json={"acs": "x"}))[0] == 400
    big = {"name": "x" * (80 * 1024)}
    assert (await call(alice, "POST", "/api/case", json=big))[0] == 413
    assert (await call(alice, "GET", "/api/cases"))[0] == 200
    assert (await call(alice, "GET", f"/api/case/{guid}"))[0] == 200
    assert (await call(alice, "GET", "/api/case/not-a-guid"))[0] == 400
    assert (await call(alice, "GET", f"/api/case/{uuid4()}"))[0] == 404
    assert (await call(bob, "PUT", f"/api/case/{guid}", json={"name": "b"}))[0] == 403
    assert (await call(alice, "PUT", f"/api/case/{guid}", json={"name": "d"}))[0] == 200
    stale = {"If-Match": '"1"'}
    assert (await call(alice, "PUT", f"/api/case/{guid}", json={}, headers=stale))[0] == 412
    other = uuid4()
    assert (await call(alice, "PUT", f"/api/case/{guid}/attach/{other}"))[0] == 403

    async with alice.get(f"/api/events/case/{guid}") as stream:
        checker.check("GET", stream.url.path, stream.status, stream.content_type, b"")
        assert stream.status == 200
        assert (await stream.content.readline()).startswith((b"data:", b"id:", b":"))
    assert (await call(alice, "GET", f"/api/events/case/{uuid4()}"))[0] == 404

    samples = f"/api/triage/{guid}/samples"
    form = aiohttp.FormData()
    form.add_field("comment", "seen on a host")
    form.add_field("file", b"MZ sample bytes", filename="sample.exe")
    status, uploaded = await call(alice, "POST", samples, data=form)
    assert status == 200
    assert (await call(alice, "GET", samples))[0] == 200
    sha256 = uploaded["data"]["sha256"]
    assert (await call(alice, "GET", f"{samples}/{'0' * 64}/download"))[0] == 404
    status, key = await call(alice, "GET", f"{samples}/{sha256}/download")
    assert status == 200
    fetch = f"/api/download/{key['data']['guid']}/{key['data']['token']}"
    assert await call(anonymous, "GET", fetch) == (200, b"MZ sample bytes")
    assert (await call(anonymous, "GET", fetch))[0] == 404

    assert (await call(hub, "PUT", f"/api/case/{guid}/attach/{other}"))[0] == 200
    assert (await call(bob, "DELETE", f"/api/case/{other}"))[0] == 403
    # carol may delete (admins) but has no change access; the federation key has both.
    assert (await call(carol, "DELETE", f"/api/case/{other}"))[0] == 403
    assert (await call(hub, "DELETE", f"/api/case/{other}"))[0] == 200
    assert (await call(alice, "GET", "/api/auth/logout"))[0] == 200
    assert (await call(alice, "GET", "/api/auth/logout"))[0] == 401

    # Every operation of the document was answered at least once with success.
    succeeded = {(method, template) for method, template, status in checker.seen if status == 200}
    described = {
        (method.upper(), template)
        for template, operations in document["paths"].items()
        for method in operations
        if method != "head"
    }
    assert described == succeeded
    errors = {status for _method, _template, status in checker.seen if status >= 400}
    assert {400, 401, 403, 404, 412, 413, 503} <= errors


async def test_a_mismatching_answer_is_caught(
    triage: ModuleType,
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
) -> None:
    """The checker is not a rubber stamp: an answer outside the document fails it."""
    running = await fusion_server(_triage_server(triage, tmp_path))
    checker = OpenAPIChecker(build_openapi(running.app))
    session = http_sessions(running.url)
    assert (await login(session, "alice"))[0] == 200
    body = msgspec.json.encode({"status": 200, "data": {"username": 3}, "count": 1})
    with pytest.raises(Exception, match="is not of type 'string'"):
        checker.check("GET", "/api/auth/is_logged", 200, "application/json", body)
    with pytest.raises(AssertionError, match="undeclared 409"):
        checker.check("GET", "/api/cases", 409, "application/json", b"{}")
    with pytest.raises(AssertionError, match="matches no path"):
        checker.check("GET", "/api/nowhere", 200, "application/json", b"{}")


class Verdict(Concept, kw_only=True):
    sha256: str


@operation("A verdict", response=Verdict)
async def _verdict(request: web.Request) -> web.Response:
    return json_response(Verdict(sha256="00"))


@operation("A verdict that drifted from its declaration", response=Verdict)
async def _drifted(request: web.Request) -> web.Response:
    return json_response({"sha256": 1})


@pytest.mark.openapi_unchecked  # its drifted answer is on purpose
async def test_the_openapi_check_option_catches_drift(
    tmp_path: Path,
    fusion_server: ServerFactory,
    http_sessions: HTTPSessionFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``--openapi-check`` does to every test: answers read are checked."""
    server = FusionServer(server_config(tmp_path))
    server.add_routes([web.get("/api/verdict", _verdict), web.get("/api/drifted", _drifted)])
    running = await fusion_server(server)
    plain = web.Application()  # no /api/openapi.json: its answers are not checked
    plain.router.add_get("/api/drifted", _drifted)
    other = await fusion_server(plain)
    recorder = record_answers(monkeypatch)
    session = http_sessions(running.url)
    for path in ("/api/verdict", "/api/info", "/api/nowhere"):
        async with session.get(path) as response:
            await response.read()
    assert (recorder.checked, recorder.failures) == (2, [])
    async with session.get("/api/drifted") as response:
        assert (await response.json())["data"] == {"sha256": 1}
    async with http_sessions(other.url).get("/api/drifted") as response:
        await response.read()
    assert recorder.checked == 3
    assert len(recorder.failures) == 1
    assert recorder.failures[0].startswith("GET /api/drifted 200: 1 is not of type 'string'")
