"""``--openapi-check``: every answer a test's HTTP clients read is checked against
the OpenAPI document of the server that sent it (loaded by the root conftest).

With the option, ``aiohttp.ClientResponse.read`` (which ``json()`` and
``text()`` use, so the Fusion client too) records each answer. An answer
from an application the test runs in-process is checked against
``build_openapi(app)`` (applications without ``setup_openapi``, such as a
test's OIDC issuer, are not checked); from another origin (a ``fusion-server``
subprocess), the first answer fetches its ``/api/openapi.json``: one more
request that server sees, so a test counting its requests or access-log lines
needs the ``openapi_unchecked`` marker under the option. Answers whose
path or method the document does not list (a 404 or 405 of the router) are
left out; the others must be as documented (:class:`OpenAPIChecker`), or the
test fails at teardown (unless marked ``openapi_unchecked``). Streamed
bodies (``content.iter_chunked``) are not read by ``read`` and not checked.
``hatch test tests/client/test_e2e_server.py --openapi-check``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fusion.server.openapi import build_openapi, serves_openapi
from fusion_testing.openapi_check import OpenAPIChecker

__all__ = ["OpenAPIRecorder", "openapi_check", "record_answers"]

_FETCHING: contextvars.ContextVar[bool] = contextvars.ContextVar("openapi_fetching", default=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--openapi-check",
        action="store_true",
        help="check every HTTP answer the tests read against the server's /api/openapi.json",
    )


# In-process applications by the port they listen on, whatever the scope of
# the fixture that started them (the sites' start records them, with the option).
_IN_PROCESS: dict[int, web.Application] = {}
_SITES: tuple[type[web.BaseSite], ...] = (web.TCPSite, web.SockSite)
_STARTS = {site: site.start for site in _SITES}


async def _recording_start(self: web.BaseSite) -> None:
    await _STARTS[type(self)](self)
    app = getattr(self._runner, "app", None)
    for sock in getattr(self._server, "sockets", None) or ():
        address = sock.getsockname()
        if isinstance(app, web.Application) and isinstance(address, tuple):
            _IN_PROCESS[address[1]] = app


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "openapi_unchecked: --openapi-check leaves this test's answers alone"
    )
    if config.getoption("--openapi-check"):
        for site in _SITES:
            site.start = _recording_start  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    for site, start in _STARTS.items():
        site.start = start  # type: ignore[method-assign]


class OpenAPIRecorder:
    """The answers checked (:attr:`checked`) and those not as documented (:attr:`failures`)."""

    def __init__(self) -> None:
        self.checkers: dict[str, OpenAPIChecker | None] = {}
        self.checked = 0
        self.failures: list[str] = []

    async def checker(self, origin: str) -> OpenAPIChecker | None:
        port = int(origin.rsplit(":", 1)[1])
        if origin not in self.checkers and port in _IN_PROCESS:
            app = _IN_PROCESS[port]
            served = serves_openapi(app)
            self.checkers[origin] = OpenAPIChecker(build_openapi(app)) if served else None
        if origin not in self.checkers:
            document: Any = None
            token = _FETCHING.set(True)
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{origin}/api/openapi.json") as response,
                ):
                    document = await response.json() if response.status == 200 else None
            except aiohttp.ClientError:
                pass  # no server there any more: nothing to check against
            finally:
                _FETCHING.reset(token)
            is_document = isinstance(document, dict) and "openapi" in document
            self.checkers[origin] = OpenAPIChecker(document) if is_document else None
        return self.checkers[origin]

    async def record(self, response: aiohttp.ClientResponse, body: bytes) -> None:
        url = response.url
        checker = await self.checker(f"{url.scheme}://{url.host}:{url.port}")
        if checker is None:
            return
        template = checker.template(url.path)
        method = response.method.lower()
        if template is None or method not in checker.document["paths"][template]:
            return
        try:
            checker.check(method, url.path, response.status, response.content_type, body)
        except Exception as exc:  # AssertionError or jsonschema's ValidationError
            self.failures.append(f"{response.method} {url.path} {response.status}: {exc}")
        self.checked += 1


def record_answers(monkeypatch: pytest.MonkeyPatch) -> OpenAPIRecorder:
    """Check each answer read through ``aiohttp.ClientResponse.read``, until
    ``monkeypatch`` undoes it."""
    recorder = OpenAPIRecorder()
    read = aiohttp.ClientResponse.read

    async def recording_read(self: aiohttp.ClientResponse) -> bytes:
        body: bytes = await read(self)
        if not _FETCHING.get() and not getattr(self, "_fusion_openapi_seen", False):
            self._fusion_openapi_seen = True  # type: ignore[attr-defined]  # once per answer
            await recorder.record(self, body)
        return body

    monkeypatch.setattr(aiohttp.ClientResponse, "read", recording_read)
    return recorder


@pytest.fixture(autouse=True)
def openapi_check(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """With ``--openapi-check``: the test fails when an answer it read is not as documented."""
    if not request.config.getoption("--openapi-check") or request.node.get_closest_marker(
        "openapi_unchecked"
    ):
        yield
        return
    recorder = record_answers(monkeypatch)
    yield
    request.node.user_properties.append(("openapi_checked", recorder.checked))
    if recorder.failures:
        pytest.fail("answers not as documented:\n" + "\n".join(recorder.failures))
