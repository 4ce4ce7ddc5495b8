"""ConceptStorage keys: any safe path segment, refused otherwise, on real files and HTTP."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web
from fusion_testing.fixtures_server import ServerFactory, call
from yarl import URL

from fusion.concept import Concept
from fusion.helper.filesystem import UnsafePathError
from fusion.helper.http_envelope import envelope_middleware, json_response
from fusion.server.storage import ConceptStorage


class Analysis(Concept, kw_only=True):
    analyzer: str
    verdict: str = "unknown"


@pytest.fixture
def analyses(tmp_path: Path) -> ConceptStorage[Analysis]:
    return ConceptStorage(tmp_path / "root" / "analyses", Analysis)


def _tree(path: Path) -> list[str]:
    """Every path under ``path`` (hidden ones included), relative and sorted."""
    return sorted(
        os.path.relpath(os.path.join(directory, name), path)
        for directory, dirnames, filenames in os.walk(path)
        for name in dirnames + filenames
    )


async def test_names_digests_and_guids_are_keys(analyses: ConceptStorage[Analysis]) -> None:
    digest = hashlib.sha256(b"MZ sample").hexdigest()
    guid = uuid4()
    for key in ("yara", digest, str(guid)):
        await analyses.write_metadata(key, Analysis(analyzer=key))
        await analyses.write_data(key, key.encode())
    await analyses.write_data_file("yara", "matches/rule1.json", b"{}")

    assert await analyses.enumerate() == sorted(["yara", digest, str(guid)])
    assert all(isinstance(key, str) for key in await analyses.enumerate())
    assert sorted(os.listdir(analyses.root)) == sorted(["yara", digest, str(guid)])
    assert await analyses.read_data(digest) == digest.encode()
    assert await analyses.read_data_file("yara", "matches/rule1.json") == b"{}"
    assert [key for key, _ in await analyses.enumerate_metadata()] == sorted(
        ["yara", digest, str(guid)]
    )
    # A UUID is its canonical string: one object, whichever is passed.
    assert await analyses.read_metadata(guid) == Analysis(analyzer=str(guid))
    assert analyses.object_dir(guid) == analyses.object_dir(str(guid))
    assert await analyses.delete(guid) is True
    assert await analyses.exists(str(guid)) is False
    assert await analyses.enumerate() == sorted(["yara", digest])


async def test_listing_leaves_out_what_is_not_an_object(
    analyses: ConceptStorage[Analysis], tmp_path: Path
) -> None:
    await analyses.write_metadata("capa", Analysis(analyzer="capa"))
    (analyses.root / "notes.txt").write_text("a file")
    (analyses.root / ".capa.0123456789ab.removing").mkdir()
    (analyses.root / "Upper").mkdir()  # made by hand: no key can name it
    (analyses.root / "link").symlink_to(tmp_path)
    assert await analyses.enumerate() == ["capa"]
    assert [key for key, _ in await analyses.enumerate_metadata()] == ["capa"]
    assert await analyses.purge_leftovers(older_than=0) == 1


HOSTILE_KEYS = [
    "",
    ".",
    "..",
    "../x",
    "../../etc/passwd",
    "a/b",
    "a\\b",
    "/tmp/x",
    "x\0y",
    "\0",
    ".hidden",
    "tab\t",
    "bidi\u202eexe",
    "a" * 256,
    "é" * 200,
    "Yara",
    "con",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
async def test_hostile_keys_are_refused_and_nothing_is_written(
    analyses: ConceptStorage[Analysis], tmp_path: Path, key: str
) -> None:
    await analyses.write_metadata("kept", Analysis(analyzer="kept"))
    before = _tree(tmp_path)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    attempts = [
        analyses.write_metadata(key, Analysis(analyzer="evil")),
        analyses.write_data(key, b"evil"),
        analyses.write_data(key, chunks()),
        analyses.write_data_file(key, "f", b"evil"),
        analyses.read_metadata(key),
        analyses.read_data(key),
        analyses.read_data_file(key, "f"),
        analyses.list_data_files(key),
        analyses.exists(key),
        analyses.delete(key),
    ]
    for attempt in attempts:
        with pytest.raises(UnsafePathError):
            await attempt
    with pytest.raises(UnsafePathError):
        analyses.object_dir(key)
    assert _tree(tmp_path) == before
    assert await analyses.enumerate() == ["kept"]


def _app(storage: ConceptStorage[Analysis]) -> web.Application:
    async def put(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        await storage.write_data(key, await request.read())
        return json_response({"key": key})

    async def get(request: web.Request) -> web.Response:
        data = await storage.read_data(request.match_info["key"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data)

    app = web.Application(middlewares=[envelope_middleware()])
    app.router.add_put("/api/analysis/{key}", put)
    app.router.add_get("/api/analysis/{key}", get)
    return app


@pytest.mark.parametrize(
    "encoded",
    ["%2E%2E", "a%2Fb", "..%2F..%2Fx", "x%00y", "%2Ehidden", "Yara", "a" * 300, "a%5Cb", "con"],
)
async def test_a_hostile_key_in_a_route_is_a_400_envelope(
    fusion_server: ServerFactory, analyses: ConceptStorage[Analysis], tmp_path: Path, encoded: str
) -> None:
    server = await fusion_server(_app(analyses))
    await analyses.write_data("kept", b"kept")
    before = _tree(tmp_path)
    async with aiohttp.ClientSession() as session:
        for method in ("PUT", "GET"):
            url = URL(f"{server.url}/api/analysis/{encoded}", encoded=True)
            async with session.request(method, url, data=b"evil") as response:
                status, body = response.status, await response.json()
            assert status == 400, (method, body)
            assert body["status"] == 400
            assert "key" in body["message"]
            assert str(tmp_path) not in body["message"]
        # A safe key goes through the same route.
        status, body = await call(session, "PUT", f"{server.url}/api/analysis/yara", data=b"ok")
        assert (status, body["data"]) == (200, {"key": "yara"})
    assert _tree(tmp_path) == sorted([*before, "root/analyses/yara", "root/analyses/yara/data"])
