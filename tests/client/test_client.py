"""FusionClient and the API classes against a real loopback server speaking the protocol."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fusion_testing.services import free_port

from fusion.client import (
    USER_AGENT,
    FusionAPIError,
    FusionAuthAPIClient,
    FusionCaseAPIClient,
    FusionClient,
    FusionClientConfig,
    FusionConnectionError,
    FusionConstantAPIClient,
    FusionInfoAPIClient,
    __version__,
)
from fusion.concept import AuthInfo, Case, ConceptError, Constant, Identity, Info

if TYPE_CHECKING:
    from tests.client.conftest import RunningServer


class ServiceConstant(Constant, kw_only=True):
    max_upload: int = 0


class TimelineCase(Case, kw_only=True):
    priority: str = "low"


async def test_info_sends_user_agent_and_decodes(protocol_server: RunningServer) -> None:
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        info = await FusionInfoAPIClient(client).info()
    assert info == Info(api="fusion-test", version="9.9.9")
    request = protocol_server.state.requests[-1]
    assert request.headers["User-Agent"] == f"fusion-client/{__version__}" == USER_AGENT
    assert "X-Fusion-API-Token" not in request.headers


async def test_api_key_header_is_sent(protocol_server: RunningServer) -> None:
    config = FusionClientConfig(api_url=protocol_server.url, api_key=protocol_server.api_key)
    async with FusionClient(config) as client:
        identity = await FusionAuthAPIClient(client).is_logged()
    assert identity == Identity(username="robot", groups=frozenset({"robots"}))
    assert (
        protocol_server.state.requests[-1].headers["X-Fusion-API-Token"] == protocol_server.api_key
    )


async def test_base_url_with_prefix_and_trailing_slash(protocol_server: RunningServer) -> None:
    client = FusionClient(FusionClientConfig(api_url=protocol_server.url + "/svc/"))
    assert str(client.url("/api/info")) == protocol_server.url + "/svc/api/info"


async def test_login_session_cookie_logout(protocol_server: RunningServer) -> None:
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        auth = FusionAuthAPIClient(client)
        assert await auth.is_logged() is None
        identity = await auth.login("admin", protocol_server.password)
        assert identity.username == "admin"
        assert identity.groups == {"admins"}
        assert await auth.is_logged() == identity
        assert await auth.identities() == [
            Identity(username="admin", groups=frozenset({"admins"})),
            Identity(username="robot"),
        ]
        await auth.logout()
        assert await auth.is_logged() is None
        assert protocol_server.state.sessions == set()


async def test_login_code_and_config(protocol_server: RunningServer) -> None:
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        auth = FusionAuthAPIClient(client)
        assert (await auth.login_code("good-code")).username == "admin"
        assert await auth.config() == AuthInfo(type="basic", parameters={})


async def test_login_refused_carries_status_and_message(protocol_server: RunningServer) -> None:
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        with pytest.raises(FusionAPIError) as caught:
            await FusionAuthAPIClient(client).login("admin", "wrong")
    assert caught.value.status == 400
    assert caught.value.message == "login refused"
    assert str(caught.value) == "HTTP 400: login refused"


async def test_plain_text_401_from_older_servers(protocol_server: RunningServer) -> None:
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        with pytest.raises(FusionAPIError) as caught:
            await FusionCaseAPIClient(client).enumerate()
    assert caught.value.status == 401
    assert caught.value.message == "401: Unauthorized"
    assert caught.value.is_auth_error


async def test_router_404_and_405_are_api_errors(protocol_server: RunningServer) -> None:
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        with pytest.raises(FusionAPIError) as caught:
            await client.request("GET", "/api/nowhere")
        assert caught.value.status == 404
        with pytest.raises(FusionAPIError) as caught:
            await client.request("DELETE", "/api/info")
        assert caught.value.status == 405


async def test_case_crud_with_service_subclass(protocol_server: RunningServer) -> None:
    config = FusionClientConfig(api_url=protocol_server.url, api_key=protocol_server.api_key)
    async with FusionClient(config) as client:
        cases = FusionCaseAPIClient(client, TimelineCase)
        created = await cases.create({"name": "incident", "acs": ["robots"], "priority": "high"})
        assert isinstance(created, TimelineCase)
        assert created.priority == "high"
        assert created.acs == {"robots"}
        fetched = await cases.retrieve(str(created.guid))
        assert fetched == created
        updated = await cases.update(created.guid, {"description": "ransomware"})
        assert updated.description == "ransomware"
        assert updated.updated is not None
        assert updated.guid == created.guid
        listed = await cases.enumerate()
        assert [case.guid for case in listed] == [created.guid]
        assert all(isinstance(case, TimelineCase) for case in listed)
        await cases.delete(created.guid)
        with pytest.raises(FusionAPIError) as caught:
            await cases.retrieve(created.guid)
        assert (caught.value.status, caught.value.message) == (404, "case not found")
        assert await cases.enumerate() == []


async def test_create_from_a_case_object(protocol_server: RunningServer) -> None:
    config = FusionClientConfig(api_url=protocol_server.url, api_key=protocol_server.api_key)
    async with FusionClient(config) as client:
        cases = FusionCaseAPIClient(client)
        case = Case(name="from object", acs={"a", "b"})
        created = await cases.create(case)
    assert type(created) is Case
    assert created.guid == case.guid
    assert created.acs == {"a", "b"}


async def test_attach_needs_federation_key(protocol_server: RunningServer) -> None:
    config = FusionClientConfig(api_url=protocol_server.url, api_key=protocol_server.api_key)
    async with FusionClient(config) as client:
        case = await FusionCaseAPIClient(client).create({"name": "x"})
        with pytest.raises(FusionAPIError) as caught:
            await FusionCaseAPIClient(client).attach(case.guid, uuid.uuid4())
        assert (caught.value.status, caught.value.message) == (403, "403: Forbidden")
    hub = FusionClientConfig(api_url=protocol_server.url, api_key=protocol_server.federation_key)
    async with FusionClient(hub) as client:
        attached = await FusionCaseAPIClient(client).attach(case.guid, uuid.uuid4())
    assert attached.managed


async def test_invalid_guid_is_refused_before_any_request(
    protocol_server: RunningServer,
) -> None:
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        with pytest.raises(ValueError, match="invalid case GUID"):
            await FusionCaseAPIClient(client).retrieve("../auth/logout")
    assert protocol_server.state.requests == []


async def test_constant_subclass(protocol_server: RunningServer) -> None:
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        plain = await FusionConstantAPIClient(client).constant()
        service = await FusionConstantAPIClient(client, ServiceConstant).constant()
    assert type(plain) is Constant
    assert plain.allow_empty_acs is False
    assert service == ServiceConstant(banner="hello", allow_empty_acs=False, max_upload=42)


async def test_invalid_envelope_is_an_api_error(protocol_server: RunningServer) -> None:
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        # /api/auth/config answers an AuthInfo: decoding it as Info must fail clearly.
        with pytest.raises(FusionAPIError, match="invalid response"):
            await client.request("GET", "/api/auth/config", concept_type=Info)
        # A handler without data, decoded as a concept: no silent None.
        await FusionAuthAPIClient(client).login("admin", protocol_server.password)
        with pytest.raises(FusionAPIError, match="no data"):
            await client.request("GET", "/api/auth/logout", concept_type=Info)


async def test_deeply_nested_answer_is_an_api_error() -> None:
    """A hostile server's JSON nested past msgspec's limit: FusionAPIError, not RecursionError."""
    from aiohttp import web

    deep = b'{"status": 200, "data": ' + b"[" * 5000 + b"]" * 5000 + b"}"

    async def answer(request: web.Request) -> web.Response:
        status = 200 if request.path == "/api/info" else 500
        return web.Response(status=status, body=deep, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/info", answer)
    app.router.add_get("/api/fail", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with FusionClient(FusionClientConfig(api_url=f"http://127.0.0.1:{port}")) as client:
            with pytest.raises(FusionAPIError, match="invalid response") as info:
                await FusionInfoAPIClient(client).info()
            assert info.value.status == 200
            with pytest.raises(FusionAPIError) as failed:
                await client.request("GET", "/api/fail")
            assert failed.value.status == 500
    finally:
        await runner.cleanup()


async def test_connection_refused_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with FusionClient(FusionClientConfig(api_url=url)) as client:
        with pytest.raises(FusionConnectionError, match="cannot connect"):
            await FusionInfoAPIClient(client).info()


async def test_read_timeout_is_a_connection_error(tmp_path: Path) -> None:
    import asyncio

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = FusionClientConfig.from_dict(
        {"api_url": f"http://127.0.0.1:{port}", "timeout": {"total": 0.3}}
    )
    try:
        async with FusionClient(config) as client:
            with pytest.raises(FusionConnectionError, match="timed out"):
                await FusionInfoAPIClient(client).info()
    finally:
        server.close()


def test_config_validation() -> None:
    with pytest.raises(ConceptError, match="api_url"):
        FusionClientConfig(api_url="ftp://example.org")
    with pytest.raises(ConceptError, match="fingerprint"):
        FusionClientConfig.from_dict({"api_url": "https://h", "ssl": "zz"})
    with pytest.raises(ConceptError, match="tiemout"):
        FusionClientConfig.from_dict({"api_url": "https://h", "tiemout": {}})
    config = FusionClientConfig.from_dict(
        {
            "api_url": "https://h:8443",
            "proxy": {"url": "http://proxy:3128", "username": "u", "password": "p"},
            "timeout": {"connect": 2},
        }
    )
    assert config.proxy is not None
    assert config.proxy.username == "u"
    assert config.timeout.connect == 2
    assert config.timeout.total == 300


async def test_request_outside_context_manager_is_refused() -> None:
    client = FusionClient(FusionClientConfig(api_url="http://127.0.0.1:1"))
    with pytest.raises(RuntimeError, match="not open"):
        await client.request("GET", "/api/info")


async def test_cookie_jar_file_keeps_the_session(
    protocol_server: RunningServer, tmp_path: Path
) -> None:
    jar = tmp_path / "state" / "cookies.json"
    config = FusionClientConfig(api_url=protocol_server.url, cookie_jar=str(jar))
    async with FusionClient(config) as client:
        await FusionAuthAPIClient(client).login("admin", protocol_server.password)
    assert stat.S_IMODE(os.stat(jar).st_mode) == 0o600
    async with FusionClient(config) as client:
        identity = await FusionAuthAPIClient(client).is_logged()
    assert identity is not None
    assert identity.username == "admin"
    # The file belongs to that server: another URL never gets the cookie.
    other = FusionClientConfig(
        api_url=protocol_server.url.replace("127.0.0.1", "localhost"), cookie_jar=str(jar)
    )
    async with FusionClient(other) as client:
        assert await FusionAuthAPIClient(client).is_logged() is None
    assert "FUSION_SESSION" not in protocol_server.state.requests[-1].cookies


async def test_requests_go_through_the_configured_proxy(protocol_server: RunningServer) -> None:
    # The loopback server plays the proxy: an unresolvable service host proves the
    # request went to the proxy, with its credentials and headers.
    config = FusionClientConfig.from_dict(
        {
            "api_url": "http://fusion.invalid:9",
            "proxy": {
                "url": protocol_server.url,
                "username": "proxy-user",
                "password": "proxy-pass",
                "headers": {"X-Proxy-Tenant": "dfir"},
            },
        }
    )
    async with FusionClient(config) as client:
        info = await FusionInfoAPIClient(client).info()
    assert info.api == "fusion-test"
    request = protocol_server.state.requests[-1]
    assert request.headers["Proxy-Authorization"] == "Basic cHJveHktdXNlcjpwcm94eS1wYXNz"
    assert request.headers["X-Proxy-Tenant"] == "dfir"
    assert request.headers["Host"] == "fusion.invalid:9"


async def test_close_then_reopen_keeps_the_session(protocol_server: RunningServer) -> None:
    client = FusionClient(FusionClientConfig(api_url=protocol_server.url))
    async with client:
        await FusionAuthAPIClient(client).login("admin", protocol_server.password)
    with pytest.raises(RuntimeError, match="not open"):
        await FusionInfoAPIClient(client).info()
    async with client:
        identity = await FusionAuthAPIClient(client).is_logged()
    assert identity is not None
    assert identity.username == "admin"
