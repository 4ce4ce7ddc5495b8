"""One session across the replicas of a service: clients sharing a FusionCookieJar.

Two real ``fusion-server serve`` processes on one redis-server (sessions in
the shared store), on different ports, one reached as 127.0.0.1 and the other
as localhost: a login through one client is valid through the other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fusion_testing.fixtures_server import (
    TEST_USERS,
    ServerProcess,
    server_config_dict,
    write_config,
)

from fusion.client import (
    FusionAuthAPIClient,
    FusionCaseAPIClient,
    FusionClient,
    FusionClientConfig,
    FusionCookieJar,
)

pytestmark = pytest.mark.redis

SESSION_COOKIE = "FUSION_SESSION"


@pytest.fixture
def replicas(
    tmp_path: Path, redis_url: str, server_process: Callable[..., ServerProcess]
) -> tuple[ServerProcess, ServerProcess]:
    config = write_config(
        tmp_path / "service.yml",
        server_config_dict(tmp_path / "data", shared_store={"url": redis_url}),
    )
    first = server_process(["--config", str(config)])
    second = server_process(["--config", str(config)])
    return first, second


def _config(url: str) -> FusionClientConfig:
    return FusionClientConfig(api_url=url)


async def test_login_through_one_replica_is_valid_through_the_other(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = replicas
    first_url = f"http://127.0.0.1:{first.port}"
    second_url = f"http://localhost:{second.port}"  # another host name, another port
    jar = FusionCookieJar()  # one per service, shared by its replicas' clients
    async with (
        FusionClient(_config(first_url), cookie_jar=jar) as one,
        FusionClient(_config(second_url), cookie_jar=jar) as other,
    ):
        assert await FusionAuthAPIClient(other).is_logged() is None
        identity = await FusionAuthAPIClient(one).login("alice", TEST_USERS["alice"][0])
        assert identity.username == "alice"
        # The session set by the first replica goes to the second one's host.
        logged = await FusionAuthAPIClient(other).is_logged()
        assert logged is not None
        assert logged.username == "alice"
        case = await FusionCaseAPIClient(other).create({"name": "shared", "acs": ["analysts"]})
        assert (await FusionCaseAPIClient(one).retrieve(case.guid)).name == "shared"
        # A client of the same replica with a jar of its own is not logged in.
        async with FusionClient(_config(second_url)) as alone:
            assert await FusionAuthAPIClient(alone).is_logged() is None
        # Logging out through the second replica ends the session for both,
        # on the servers too: the old cookie replayed to the first one is refused.
        session = jar.filter_cookies(one.base_url)[SESSION_COOKIE].value
        await FusionAuthAPIClient(other).logout()
        assert await FusionAuthAPIClient(one).is_logged() is None
        assert await FusionAuthAPIClient(other).is_logged() is None
    replayed = FusionClient(_config(first_url))
    replayed.cookie_jar.update_cookies({SESSION_COOKIE: session}, replayed.base_url)
    async with replayed:
        assert SESSION_COOKIE in replayed.cookie_jar.filter_cookies(replayed.base_url)
        assert await FusionAuthAPIClient(replayed).is_logged() is None


async def test_a_shared_jar_keeps_the_session_off_other_hosts(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = replicas
    async with FusionClient(_config(f"http://127.0.0.1:{first.port}")) as one:
        await FusionAuthAPIClient(one).login("bob", TEST_USERS["bob"][0])
        jar: FusionCookieJar = one.cookie_jar
        assert jar.is_service_url(one.base_url)
        # The other replica is not part of the service until a client adds it.
        stranger = one.base_url.with_port(second.port)
        assert SESSION_COOKIE not in jar.filter_cookies(stranger)
        async with FusionClient(_config(str(stranger)), cookie_jar=jar) as other:
            assert SESSION_COOKIE in jar.filter_cookies(stranger)
            logged = await FusionAuthAPIClient(other).is_logged()
            assert logged is not None
            assert logged.username == "bob"
        # Another host or port still gets nothing.
        assert len(jar.filter_cookies(one.base_url.with_port(1))) == 0
        assert len(jar.filter_cookies(one.base_url.with_host("127.0.0.2"))) == 0
