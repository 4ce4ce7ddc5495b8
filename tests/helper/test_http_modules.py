"""The split HTTP helpers: domain errors mapped by the envelope, and what each side imports.

Over real loopback sockets (aiohttp_client): a domain error raised by a
handler gets its status in the envelope, in one place, with no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from fusion.helper.filesystem import UnsafePathError, safe_join
from fusion.helper.http_envelope import envelope_middleware, map_error
from fusion.helper.streaming import SizeLimitError

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


class GoneError(Exception):
    """A service's own domain error."""


class SpecificGoneError(GoneError):
    """A subclass: answered as its mapped parent."""


class BusyError(RuntimeError):
    def __init__(self, retry_after: float) -> None:
        super().__init__("busy, come back later")
        self.retry_after = retry_after


def _raising(exc: Exception) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    return handler


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Any) -> Client:
    (tmp_path / "link").symlink_to("/")

    async def escape(request: web.Request) -> web.Response:
        safe_join(tmp_path, "link", "etc")
        return web.Response()

    app = web.Application(middlewares=[envelope_middleware()])
    map_error(app, GoneError, 404, "gone")
    map_error(app, BusyError, 503)
    app.router.add_get("/escape", escape)
    app.router.add_get("/size", _raising(SizeLimitError(10)))
    app.router.add_get("/unsafe", _raising(UnsafePathError("name 'x' refused")))
    app.router.add_get("/gone", _raising(SpecificGoneError("/srv/secret/path is missing")))
    app.router.add_get("/busy", _raising(BusyError(2.4)))
    app.router.add_get("/bug", _raising(KeyError("internal")))
    return await aiohttp_client(app)


async def _answer(client: Client, path: str) -> tuple[int, Any, Any]:
    async with client.get(path) as response:
        return response.status, await response.json(), response.headers


async def test_helper_errors_are_mapped(client: Client, tmp_path: Any) -> None:
    status, body, _ = await _answer(client, "/escape")
    # The message names the offending part, never the server's directory.
    assert (status, body) == (
        400,
        {"status": 400, "message": "path 'link/etc' leaves its directory"},
    )
    assert str(tmp_path) not in body["message"]
    status, body, _ = await _answer(client, "/unsafe")
    assert (status, body) == (400, {"status": 400, "message": "name 'x' refused"})
    status, body, _ = await _answer(client, "/size")
    assert (status, body) == (413, {"status": 413, "message": "size limit of 10 bytes exceeded"})


async def test_service_errors_are_mapped_with_their_message_or_a_fixed_one(client: Client) -> None:
    status, body, _ = await _answer(client, "/gone")
    # A fixed message hides the exception's text (which names a path).
    assert (status, body) == (404, {"status": 404, "message": "gone"})
    status, body, headers = await _answer(client, "/busy")
    assert (status, body) == (503, {"status": 503, "message": "busy, come back later"})
    assert headers["Retry-After"] == "2"


async def test_unmapped_errors_stay_500(client: Client) -> None:
    status, body, _ = await _answer(client, "/bug")
    assert (status, body) == (500, {"status": 500, "message": "internal server error"})


def test_map_error_needs_an_error_status() -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        map_error(web.Application(), GoneError, 302)


def _loaded_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    return set(result.stdout.decode().split())


def test_client_loads_no_server_side_module() -> None:
    loaded = _loaded_after(
        "import fusion.client, fusion.client.download, fusion.client.event\n"
        "from fusion.helper.sse import iter_sse\n"
        "from fusion.client.download import safe_filename"
    )
    server_side = {
        "aiohttp.web",
        "fusion.helper.http_envelope",
        "fusion.helper.http_request",
        "fusion.helper.http_response",
        "fusion.server",
    }
    assert not loaded & server_side, loaded & server_side


def test_one_safe_filename() -> None:
    from fusion.client import safe_filename as client_safe_filename
    from fusion.helper import safe_filename

    assert client_safe_filename is safe_filename


def test_package_reexports_the_split_modules() -> None:
    import fusion.helper
    import fusion.helper.aiohttp as compat
    from fusion.helper import http_envelope, http_request, http_response, sse

    for name in compat.__all__:
        value = getattr(compat, name)
        owners = [m for m in (http_envelope, http_request, http_response, sse) if name in m.__all__]
        assert len(owners) == 1, name
        assert getattr(owners[0], name) is value
        if name in fusion.helper.__all__:
            assert getattr(fusion.helper, name) is value
