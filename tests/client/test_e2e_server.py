"""End to end: a real ``fusion-server`` process on a loopback port, driven by the client.

Two processes per module: one on the embedded defaults (admin password from
FUSION_ADMIN_PASSWORD, temp data dir), one from a configuration file with
several users, a robot API key and the federation key.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from fusion_testing.fixtures_cli import MainRunner
from fusion_testing.fixtures_server import (
    FEDERATION_KEY,
    ROBOT_KEY,
    TEST_USERS,
    ServerProcess,
    server_config_dict,
    write_config,
)
from fusion_testing.services import free_port

from fusion.client import (
    FusionAPIError,
    FusionAuthAPIClient,
    FusionCaseAPIClient,
    FusionClient,
    FusionClientConfig,
    FusionConstantAPIClient,
    FusionInfoAPIClient,
)
from fusion.client.cli import main
from fusion.concept import AuthInfo, Case, Identity

ADMIN_PASSWORD = "e2e-admin-password"


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("embedded")
    process = ServerProcess(
        ["--data-dir", str(workdir / "data")],
        cwd=workdir,
        env={"FUSION_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    with process:
        yield process


@pytest.fixture(scope="module")
def configured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("configured")
    data = workdir / "data"
    data.mkdir()
    (data / "constant.yml").write_text("banner: maintenance at noon\nallow_empty_acs: false\n")
    config = write_config(workdir / "fusion.yml", server_config_dict(data))
    with ServerProcess(["--config", str(config)], cwd=workdir) as process:
        yield process


def _config(server: ServerProcess, api_key: str | None = None) -> FusionClientConfig:
    return FusionClientConfig(api_url=server.url, api_key=api_key)


async def test_info_and_auth_config(embedded_server: ServerProcess) -> None:
    async with FusionClient(_config(embedded_server)) as client:
        info = await FusionInfoAPIClient(client).info()
        auth_info = await FusionAuthAPIClient(client).config()
    assert info.api == "fusion"
    assert info.version
    assert auth_info == AuthInfo(type="basic", parameters=auth_info.parameters)


async def test_admin_session_and_case_lifecycle(embedded_server: ServerProcess) -> None:
    async with FusionClient(_config(embedded_server)) as client:
        auth = FusionAuthAPIClient(client)
        cases = FusionCaseAPIClient(client)
        assert await auth.is_logged() is None
        with pytest.raises(FusionAPIError) as caught:
            await cases.enumerate()
        assert caught.value.status == 401

        identity = await auth.login("admin", ADMIN_PASSWORD)
        assert identity == Identity(username="admin", groups=frozenset({"admins"}))
        assert await auth.is_logged() == identity
        assert "admin" in {seen.username for seen in await auth.identities()}

        created = await cases.create({"name": "e2e", "description": "first", "acs": ["admins"]})
        assert created.name == "e2e"
        assert created.acs == {"admins"}
        assert created.managed is False
        assert await cases.retrieve(created.guid) == created
        assert created.guid in {case.guid for case in await cases.enumerate()}

        updated = await cases.update(created.guid, {"description": "second", "managed": True})
        assert updated.description == "second"
        assert updated.managed is False  # immutable: the server keeps it
        assert updated.created == created.created
        assert updated.updated is not None

        closed = await cases.update(created.guid, {"closed": "2026-11-28T05:00:00Z"})
        assert closed.closed is not None
        with pytest.raises(FusionAPIError) as caught:
            await cases.update(created.guid, {"description": "while closed"})
        assert caught.value.status == 403  # the closed-case rule
        assert "closed" in caught.value.message
        reopened = await cases.update(created.guid, {"closed": None, "description": "again"})
        assert reopened.closed is None
        assert reopened.description == "again"

        await cases.delete(created.guid)
        with pytest.raises(FusionAPIError) as caught:
            await cases.retrieve(created.guid)
        assert caught.value.status == 404
        with pytest.raises(FusionAPIError) as caught:
            await cases.delete(created.guid)
        assert caught.value.status == 404

        await auth.logout()
        assert await auth.is_logged() is None
        with pytest.raises(FusionAPIError) as caught:
            await auth.logout()
        assert caught.value.status == 401


async def test_error_statuses_carry_the_servers_reason(embedded_server: ServerProcess) -> None:
    async with FusionClient(_config(embedded_server)) as client:
        auth = FusionAuthAPIClient(client)
        with pytest.raises(FusionAPIError) as caught:
            await auth.login("admin", "not the password")
        assert caught.value.status == 400
        assert caught.value.message
        await auth.login("admin", ADMIN_PASSWORD)
        with pytest.raises(FusionAPIError) as caught:
            await client.request("POST", "/api/case", json={"name": "x", "acs": 5})
        assert caught.value.status == 400
        assert "acs" in caught.value.message
        with pytest.raises(FusionAPIError) as caught:
            await client.request("GET", "/api/case/not-a-guid")
        assert caught.value.status == 400
        with pytest.raises(FusionAPIError) as caught:
            await client.request("GET", "/api/no/such/route")
        assert caught.value.status == 404
        with pytest.raises(FusionAPIError) as caught:
            await FusionConstantAPIClient(client).constant()
        assert caught.value.status == 503  # no constant file on embedded defaults
        with pytest.raises(FusionAPIError) as caught:
            await FusionCaseAPIClient(client).attach(uuid.uuid4(), uuid.uuid4())
        assert caught.value.status in (403, 404)
        await auth.logout()


async def test_robot_key_constant_and_access_control(configured_server: ServerProcess) -> None:
    async with FusionClient(_config(configured_server, api_key=ROBOT_KEY)) as robot:
        assert await FusionAuthAPIClient(robot).is_logged() == Identity(
            username="robot", groups=frozenset({"robots"})
        )
        constant = await FusionConstantAPIClient(robot).constant()
        assert constant.banner == "maintenance at noon"
        assert constant.allow_empty_acs is False
        case = await FusionCaseAPIClient(robot).create({"name": "robot case", "acs": ["robots"]})

    async with FusionClient(_config(configured_server)) as alice:
        await FusionAuthAPIClient(alice).login("alice", TEST_USERS["alice"][0])
        cases = FusionCaseAPIClient(alice)
        assert case.guid not in {listed.guid for listed in await cases.enumerate()}
        with pytest.raises(FusionAPIError) as caught:
            await cases.retrieve(case.guid)
        assert caught.value.status in (403, 404)
        own = await cases.create({"name": "alice case", "acs": ["analysts"]})
        # Alice may change her case but is not in can_delete.
        with pytest.raises(FusionAPIError) as caught:
            await cases.delete(own.guid)
        assert caught.value.status == 403

    async with FusionClient(_config(configured_server, api_key="not-a-key")) as stranger:
        with pytest.raises(FusionAPIError) as caught:
            await FusionCaseAPIClient(stranger).enumerate()
        assert caught.value.status == 401


async def test_attach_with_the_federation_key(configured_server: ServerProcess) -> None:
    async with FusionClient(_config(configured_server, api_key=ROBOT_KEY)) as robot:
        case = await FusionCaseAPIClient(robot).create({"name": "to federate", "acs": ["robots"]})
        with pytest.raises(FusionAPIError) as caught:
            await FusionCaseAPIClient(robot).attach(case.guid, uuid.uuid4())
        assert caught.value.status == 403
    next_guid = uuid.uuid4()
    async with FusionClient(_config(configured_server, api_key=FEDERATION_KEY)) as hub:
        attached = await FusionCaseAPIClient(hub).attach(case.guid, next_guid)
        assert isinstance(attached, Case)
        assert attached.guid == next_guid
        assert attached.name == "to federate"


async def test_cookie_jar_file_survives_a_new_client(
    embedded_server: ServerProcess, tmp_path: Path
) -> None:
    config = FusionClientConfig(api_url=embedded_server.url, cookie_jar=str(tmp_path / "jar"))
    async with FusionClient(config) as client:
        await FusionAuthAPIClient(client).login("admin", ADMIN_PASSWORD)
    async with FusionClient(config) as client:
        identity = await FusionAuthAPIClient(client).is_logged()
        assert identity is not None
        assert identity.username == "admin"
        await FusionAuthAPIClient(client).logout()
    assert not (tmp_path / "jar").exists()


CliCall = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
def cli(run_main: MainRunner) -> CliCall:
    """``await cli(*argv, home=..., stdin=...)`` -> (code, stdout, stderr), in-process."""

    async def run(*args: str, home: Path, stdin: str = "") -> tuple[int, str, str]:
        result = await run_main.in_thread(
            main, *args, stdin=stdin, env={"XDG_CONFIG_HOME": str(home)}
        )
        assert "Traceback" not in result.stderr
        return result.code, result.stdout, result.stderr

    return run


async def test_cli_session_against_the_server(
    configured_server: ServerProcess, tmp_path: Path, cli: CliCall
) -> None:
    url = configured_server.url
    password = TEST_USERS["carol"][0]
    code, out, err = await cli(
        "--url", url, "login", "--username", "carol", "--password-stdin",
        home=tmp_path, stdin=password + "\n",
    )  # fmt: skip
    assert code == 0, err
    assert "logged in as carol (admins)" in out
    code, out, err = await cli(
        "--url", url, "--json", "cases", "create", "--name", "from the cli", "--acs", "admins",
        home=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    guid = msgspec.json.decode(out)["guid"]
    code, out, err = await cli("--url", url, "cases", "list", home=tmp_path)
    assert code == 0, err
    assert guid in out
    assert "from the cli" in out
    code, out, err = await cli("--url", url, "cases", "delete", guid, home=tmp_path)
    assert code == 0, err
    code, out, err = await cli("--url", url, "logout", home=tmp_path)
    assert code == 0, err
    code, out, err = await cli("--url", url, "cases", "list", home=tmp_path)
    assert code == 4
    assert err.startswith("fusion-client: error: not logged in")


async def test_cli_wrong_password_and_server_down(
    configured_server: ServerProcess, tmp_path: Path, cli: CliCall
) -> None:
    code, _, err = await cli(
        "--url", configured_server.url, "login", "-u", "mallory", "--password-stdin",
        home=tmp_path, stdin="wrong\n",
    )  # fmt: skip
    assert code == 4
    assert err.startswith("fusion-client: error: login refused")
    assert len(err.strip().splitlines()) == 1
    code, _, err = await cli("--url", f"http://127.0.0.1:{free_port()}", "info", home=tmp_path)
    assert code == 3
    assert "cannot connect" in err
    assert len(err.strip().splitlines()) == 1
