"""A service's own routes through FusionClient.request: query parameters, JSON, typed answers.

Against a real FusionServer on loopback with routes of its own (added with
``add_routes``), as the real service clients call them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import ROBOT_KEY, ServerFactory, server_config

from fusion.client import FusionAPIError, FusionClient, FusionClientConfig
from fusion.client.client import query_pairs
from fusion.concept import Concept, Priority
from fusion.helper import FusionHTTPError
from fusion.helper.http_envelope import json_response
from fusion.helper.http_request import get_guid, read_concept
from fusion.server import FusionServer
from fusion.server.appkeys import AUTH


class StoredSample(Concept, kw_only=True):
    """The server's record: more fields than its client knows."""

    guid: UUID
    name: str
    priority: Priority = Priority.LOW
    analysed: bool = False
    internal_path: str = "/srv/samples/x"


class Sample(Concept, kw_only=True):
    """The service client's own Concept: a subset, plus a field with a default."""

    guid: UUID
    name: str
    priority: Priority = Priority.LOW
    comment: str = ""


@pytest.fixture
async def service(tmp_path: Path, fusion_server: ServerFactory) -> str:
    samples: dict[UUID, StoredSample] = {}

    async def list_samples(request: web.Request) -> web.Response:
        await request.app[AUTH].authenticate(request)
        get_guid(request)  # 400 for a bad case GUID
        found = list(samples.values())
        if "priority" in request.query:
            found = [s for s in found if s.priority == request.query["priority"]]
        return json_response(found)

    async def echo_query(request: web.Request) -> web.Response:
        await request.app[AUTH].authenticate(request)
        return json_response([[key, value] for key, value in request.query.items()])

    async def put_sample(request: web.Request) -> web.Response:
        await request.app[AUTH].authenticate(request)
        sample = await read_concept(request, StoredSample, 64 * 1024)
        if sample.guid != get_guid(request, "sample_guid"):
            raise FusionHTTPError(400, "the body's guid is not the route's")
        samples[sample.guid] = sample
        return json_response(sample)

    async def get_sample(request: web.Request) -> web.Response:
        await request.app[AUTH].authenticate(request)
        sample = samples.get(get_guid(request, "sample_guid"))
        if sample is None:
            raise FusionHTTPError(404, "sample not found")
        return json_response(sample)

    async def delete_sample(request: web.Request) -> web.Response:
        await request.app[AUTH].authenticate(request)
        if samples.pop(get_guid(request, "sample_guid"), None) is None:
            raise FusionHTTPError(404, "sample not found")
        return json_response()

    async def echo_body(request: web.Request) -> web.Response:
        identity = await request.app[AUTH].authenticate(request)
        body = await request.json() if request.can_read_body else None
        return json_response({"method": request.method, "who": identity.username, "body": body})

    async def moved(request: web.Request) -> web.Response:
        status = int(request.query["status"])
        return web.Response(status=status, headers={"Location": "/api/echo-body?moved=1"})

    server = FusionServer(server_config(tmp_path / "data"))
    server.add_routes(
        [
            web.get("/api/case/{case_guid}/samples", list_samples),
            web.get("/api/echo", echo_query),
            web.route("*", "/api/echo-body", echo_body),
            web.route("*", "/api/moved", moved),
            web.put("/api/case/{case_guid}/sample/{sample_guid}", put_sample),
            web.get("/api/case/{case_guid}/sample/{sample_guid}", get_sample),
            web.delete("/api/case/{case_guid}/sample/{sample_guid}", delete_sample),
        ]
    )
    return (await fusion_server(server)).url


def _client(url: str) -> FusionClient:
    return FusionClient(FusionClientConfig(api_url=url, api_key=ROBOT_KEY))


async def test_query_parameters_arrive(service: str) -> None:
    async with _client(service) as client:
        pairs = await client.request(
            "GET",
            "/api/echo",
            params={"active": "", "limit": 10, "ratio": 0.5, "full": True, "tag": ["a", "b c"]},
            concept_type=list[tuple[str, str]],
        )
        assert pairs == [
            ("active", ""),
            ("limit", "10"),
            ("ratio", "0.5"),
            ("full", "true"),
            ("tag", "a"),
            ("tag", "b c"),
        ]
        # Pairs keep their order; a path with its own query keeps it too.
        pairs = await client.request(
            "GET", "/api/echo?x=1", params=[("y", False)], concept_type=list[tuple[str, str]]
        )
        assert pairs == [("x", "1"), ("y", "false")]


async def test_json_body_and_answers_decode_into_the_service_concepts(service: str) -> None:
    case_guid = uuid4()
    sample = StoredSample(guid=uuid4(), name="invoice.exe", priority=Priority.HIGH, analysed=True)
    async with _client(service) as client:
        base = f"/api/case/{case_guid}/sample"
        stored = await client.request(
            "PUT", f"{base}/{sample.guid}", json=sample, concept_type=Sample
        )
        # The server's extra fields are ignored, the client's own default is kept.
        assert stored == Sample(guid=sample.guid, name="invoice.exe", priority=Priority.HIGH)
        # A plain dict body works as well; listed and filtered by a query parameter.
        other = {"guid": str(uuid4()), "name": "notes.txt"}
        await client.request("PUT", f"{base}/{other['guid']}", json=other)
        listed = await client.request(
            "GET", f"/api/case/{case_guid}/samples", concept_type=list[Sample]
        )
        assert sorted(s.name for s in listed) == ["invoice.exe", "notes.txt"]
        high = await client.request(
            "GET",
            f"/api/case/{case_guid}/samples",
            params={"priority": "high"},
            concept_type=list[Sample],
        )
        assert [s.name for s in high] == ["invoice.exe"]
        # Without concept_type: builtins, every key the server sent.
        raw: Any = await client.request("GET", f"{base}/{sample.guid}")
        assert raw["analysed"] is True
        assert raw["internal_path"] == "/srv/samples/x"
        assert await client.request("DELETE", f"{base}/{sample.guid}") is None


async def test_route_errors_are_typed(service: str) -> None:
    case_guid = uuid4()
    async with _client(service) as client:
        with pytest.raises(FusionAPIError) as caught:
            await client.request(
                "GET", f"/api/case/{case_guid}/sample/{uuid4()}", concept_type=Sample
            )
        assert (caught.value.status, caught.value.message) == (404, "sample not found")
        with pytest.raises(FusionAPIError) as caught:
            await client.request("GET", "/api/case/not-a-guid/samples", concept_type=list[Sample])
        assert caught.value.status == 400
        # A body the server's Concept refuses: 400 naming the field.
        with pytest.raises(FusionAPIError) as caught:
            await client.request(
                "PUT", f"/api/case/{case_guid}/sample/{uuid4()}", json={"guid": str(uuid4())}
            )
        assert caught.value.status == 400
        assert "name" in caught.value.message
        # An answer that does not fit the client's Concept is an error, not a wrong object.
        sample_guid = uuid4()
        await client.request(
            "PUT",
            f"/api/case/{case_guid}/sample/{sample_guid}",
            json={"guid": str(sample_guid), "name": "x"},
        )
        with pytest.raises(FusionAPIError, match="invalid response"):
            await client.request(
                "GET", f"/api/case/{case_guid}/sample/{sample_guid}", concept_type=list[Sample]
            )
    async with FusionClient(FusionClientConfig(api_url=service)) as anonymous:
        with pytest.raises(FusionAPIError) as caught:
            await anonymous.request("GET", f"/api/case/{case_guid}/samples")
        assert caught.value.status == 401


@pytest.mark.parametrize(
    ("status", "method"), [(307, "POST"), (308, "POST"), (303, "GET"), (302, "GET")]
)
async def test_redirects_on_the_own_server_keep_the_key(
    service: str, status: int, method: str
) -> None:
    async with _client(service) as client:
        answer = await client.request(
            "POST", "/api/moved", params={"status": status}, json={"n": 1}
        )
    # 307/308 send the body again; 302/303 go on as a GET without it.
    assert answer == {
        "method": method,
        "who": "robot",
        "body": {"n": 1} if method == "POST" else None,
    }


def test_query_pairs() -> None:
    assert query_pairs({"a": 1, "b": [True, 2.5], "c": ""}) == [
        ("a", "1"),
        ("b", "true"),
        ("b", "2.5"),
        ("c", ""),
    ]
    with pytest.raises(TypeError, match="query value"):
        query_pairs({"a": None})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="query value"):
        query_pairs({"a": [msgspec.UNSET]})  # type: ignore[list-item]
