"""FusionEventAPI over real loopback sockets, on memory:// and a real redis-server."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from fusion_testing.clock import StoreClock, eventually

from fusion.concept import Case, Event, Identity
from fusion.helper.http_envelope import FusionHTTPError, envelope_middleware
from fusion.helper.sse import SSEEvent, iter_sse
from fusion.helper.store import SharedStore, create_store
from fusion.server.appkeys import EVENTS, STORE
from fusion.server.event import FusionEventAPI, FusionEventConfig

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

CASE = Case(guid=UUID("0b9e8f4c-3c1e-4a53-9f57-1f2d3c4b5a69"), name="watched")
SECRET = Case(guid=UUID("7c6b5a49-3827-4615-8a9b-0c1d2e3f4a5b"), name="secret", acs={"alice"})


class Cases:
    """The test's cases and a trivial authorizer over them (X-User header)."""

    def __init__(self, *cases: Case) -> None:
        self.cases = {case.guid: case for case in cases}

    async def authorize(self, request: web.Request, case_guid: UUID) -> tuple[Identity, Case]:
        username = request.headers.get("X-User")
        if not username:
            raise FusionHTTPError(401, "not logged in")
        case = self.cases.get(case_guid)
        if case is None:
            raise FusionHTTPError(404, "case not found")
        if case.acs and username not in case.acs:
            raise FusionHTTPError(403, "access denied")
        return Identity(username=username), case


def make_app(store: SharedStore, **options: Any) -> web.Application:
    app = web.Application(middlewares=[envelope_middleware()])
    app[STORE] = store
    config = FusionEventConfig(source="test", **options)
    FusionEventAPI(config, authorize=Cases(CASE, SECRET).authorize).setup(app)

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"status": 200})

    app.router.add_get("/ping", ping)
    return app


def api_of(client: Client) -> FusionEventAPI:
    api = client.app[EVENTS]
    assert isinstance(api, FusionEventAPI)
    return api


class Watcher:
    """One SSE subscriber driven over the test client."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.events = iter_sse(response.content)

    async def next(self) -> tuple[str | None, Event[Any]]:
        async with asyncio.timeout(5):
            sse: SSEEvent = await anext(self.events)
        return sse.id, Event.from_json(sse.data)

    async def until(
        self, category: str, username: str | None = None
    ) -> tuple[str | None, Event[Any]]:
        while True:
            event_id, event = await self.next()
            if event.category != category:
                continue
            if username is None or (event.ext or {}).get("username") == username:
                return event_id, event

    def close(self) -> None:
        self.response.close()


async def watch(
    client: Client, username: str, case: Case = CASE, last_event_id: str | None = None
) -> Watcher:
    headers = {"X-User": username}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    response = await client.get(f"/api/events/case/{case.guid}", headers=headers)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    return Watcher(response)


async def test_first_event_lists_the_watchers(
    aiohttp_client: ClientFactory, store: SharedStore
) -> None:
    client = await aiohttp_client(make_app(store))
    alice = await watch(client, "alice")
    _, hello = await alice.next()
    assert hello.category == "subscribers"
    assert hello.source == "test"
    assert hello.case.guid == CASE.guid
    assert hello.ext == {"usernames": ["alice"]}

    bob = await watch(client, "bob")
    _, hello = await bob.next()
    assert hello.ext == {"usernames": ["alice", "bob"]}
    # Alice hears Bob arrive.
    _, joined = await alice.until("subscribe", "bob")
    assert joined.ext == {"username": "bob"}

    # A second stream of Alice's is not news.
    alice_again = await watch(client, "alice")
    _, hello = await alice_again.next()
    assert hello.ext == {"usernames": ["alice", "bob"]}

    bob.close()
    _, left = await alice.until("unsubscribe")
    assert left.ext == {"username": "bob"}
    alice.close()
    alice_again.close()


async def test_events_arrive_in_order_with_increasing_ids(
    aiohttp_client: ClientFactory, store: SharedStore
) -> None:
    client = await aiohttp_client(make_app(store))
    api = api_of(client)
    watcher = await watch(client, "alice")
    first_id, _ = await watcher.next()
    assert first_id is not None
    for index in range(20):
        await api.notify("update_case", CASE, {"index": index})
    ids = []
    for index in range(20):
        event_id, event = await watcher.until("update_case")
        assert event.ext == {"index": index}
        assert event.case.guid == CASE.guid
        assert event.source == "test"
        assert event_id is not None
        ids.append(event_id)
    keys = [tuple(int(part) for part in event_id.split("-")) for event_id in ids]
    assert keys == sorted(keys)
    assert len(set(ids)) == 20
    watcher.close()


async def test_resume_with_last_event_id(aiohttp_client: ClientFactory, store: SharedStore) -> None:
    client = await aiohttp_client(make_app(store))
    api = api_of(client)
    watcher = await watch(client, "alice")
    await watcher.next()
    for index in range(3):
        await api.notify("step", CASE, {"index": index})
    last_id = None
    for _ in range(3):
        last_id, _event = await watcher.until("step")
    watcher.close()
    for index in range(3, 8):
        await api.notify("step", CASE, {"index": index})

    resumed = await watch(client, "alice", last_event_id=last_id)
    hello_id, hello = await resumed.next()
    assert hello.category == "subscribers"
    assert hello_id == last_id
    got: list[int] = []
    while len(got) < 5:
        _, event = await resumed.until("step")
        assert event.ext is not None
        got.append(event.ext["index"])
    # Missed events, then live ones, never a duplicate.
    await api.notify("step", CASE, {"index": 8})
    _, event = await resumed.until("step")
    assert event.ext is not None
    got.append(event.ext["index"])
    assert got == [3, 4, 5, 6, 7, 8]
    resumed.close()


async def test_fresh_subscriber_can_resume_from_its_first_id(
    aiohttp_client: ClientFactory, store: SharedStore
) -> None:
    client = await aiohttp_client(make_app(store))
    api = api_of(client)
    await api.notify("before", CASE)
    watcher = await watch(client, "alice")
    hello_id, _ = await watcher.next()
    watcher.close()
    await api.notify("missed", CASE)
    resumed = await watch(client, "alice", last_event_id=hello_id)
    _, event = await resumed.until("missed")
    assert event.category == "missed"
    resumed.close()


@pytest.mark.parametrize("last_event_id", ["not-an-id", "99999999999999-0", "-1", "1-x"])
async def test_garbage_last_event_id_starts_fresh(
    aiohttp_client: ClientFactory, store: SharedStore, last_event_id: str
) -> None:
    client = await aiohttp_client(make_app(store))
    api = api_of(client)
    await api.notify("old", CASE)
    watcher = await watch(client, "alice", last_event_id=last_event_id)
    _, hello = await watcher.next()
    assert hello.category == "subscribers"
    await api.notify("new", CASE)
    _, event = await watcher.next()
    if event.category == "subscribe":
        _, event = await watcher.next()
    assert event.category == "new"
    watcher.close()


async def test_keepalive_comments(aiohttp_client: ClientFactory, store: SharedStore) -> None:
    client = await aiohttp_client(make_app(store, keepalive=0.05))
    async with client.get(f"/api/events/case/{CASE.guid}", headers={"X-User": "a"}) as response:
        seen = b""
        async with asyncio.timeout(5):
            while seen.count(b": keepalive\n\n") < 3:
                seen += await response.content.readany()
    assert seen.startswith(b"id: ")


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/api/events/case/not-a-guid", {"X-User": "alice"}, 400),
        (f"/api/events/case/{CASE.guid}", {}, 401),
        (f"/api/events/case/{SECRET.guid}", {"X-User": "bob"}, 403),
        (f"/api/events/case/{uuid4()}", {"X-User": "alice"}, 404),
    ],
)
async def test_errors_use_the_envelope(
    aiohttp_client: ClientFactory, path: str, headers: dict[str, str], status: int
) -> None:
    store = create_store("memory://")
    client = await aiohttp_client(make_app(store))
    async with client.get(path, headers=headers) as response:
        assert response.status == status
        body = await response.json()
        assert body["status"] == status
        assert body["message"]
    await store.close()


async def test_a_slow_subscriber_cannot_stall_the_others(
    aiohttp_client: ClientFactory, store: SharedStore
) -> None:
    client = await aiohttp_client(make_app(store, queue_size=8, keepalive=60))
    api = api_of(client)
    fast = await watch(client, "fast")
    await fast.next()
    # A raw client with a tiny receive buffer that never reads.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET /api/events/case/{CASE.guid} HTTP/1.1\r\nHost: x\r\nX-User: slow\r\n\r\n".encode()
    )
    await writer.drain()
    await fast.until("subscribe", "slow")
    assert api.open_streams == 2
    padding = "x" * 32_000
    total = 200
    for index in range(total):
        await api.notify("bulk", CASE, {"index": index, "padding": padding})
        await asyncio.sleep(0)
        # The fast subscriber keeps up the whole time.
        _, event = await fast.until("bulk")
        assert event.ext is not None
        assert event.ext["index"] == index
    # The slow one was dropped, cleanly: what it reads now ends with the chunked terminator.
    data = b""
    async with asyncio.timeout(10):
        while not data.endswith(b"0\r\n\r\n"):
            chunk = await reader.read(1 << 20)
            assert chunk, "connection closed before the end of the stream"
            data += chunk
    writer.close()
    assert data.endswith(b"0\r\n\r\n")
    assert data.count(b'"category":"bulk"') < total
    assert api.open_streams == 1
    fast.close()


async def test_shutdown_closes_every_stream(store: SharedStore) -> None:
    from aiohttp import ClientSession

    app = make_app(store, keepalive=60)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with ClientSession() as session:
        responses = []
        for index in range(5):
            response = await session.get(
                f"http://127.0.0.1:{port}/api/events/case/{CASE.guid}",
                headers={"X-User": f"user{index}"},
            )
            assert response.status == 200
            await response.content.readline()
            responses.append(response)
        api = app[EVENTS]
        assert isinstance(api, FusionEventAPI)
        assert api.open_streams == 5
        async with asyncio.timeout(5):
            await runner.cleanup()
        assert api.open_streams == 0
        for response in responses:
            async with asyncio.timeout(5):
                # Every stream ends with a clean end of stream, not a reset.
                rest = await response.content.read()
            assert response.content.at_eof()
            assert b"Traceback" not in rest
            response.close()


async def test_notify_survives_a_store_outage(
    aiohttp_client: ClientFactory, private_redis_server: Any
) -> None:
    store = create_store(private_redis_server.url)
    try:
        client = await aiohttp_client(make_app(store))
        api = api_of(client)
        private_redis_server.stop()
        # The case change that caused it must not fail because events cannot be published.
        await api.notify("update_case", CASE)
    finally:
        await store.close()


def test_event_json_is_one_line() -> None:
    # SSE "data:" lines must not break: msgspec never pretty-prints.
    raw = Event(source="s", category="c", case=CASE, ext={"text": "a\nb"}).to_json()
    assert b"\n" not in raw
    assert msgspec.json.decode(raw)["ext"] == {"text": "a\nb"}


class Receiver:
    """A real webhook receiver on a loopback port, recording what it gets."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str | None, dict[str, Any]]] = []
        self.failures_left = 0
        self.delay = 0.0
        self.arrived = asyncio.Event()

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            self.received.append(
                (
                    request.path,
                    request.headers.get("X-Fusion-Notifier-Token"),
                    await request.json(),
                )
            )
            self.arrived.set()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.failures_left > 0:
                self.failures_left -= 1
                return web.Response(status=500)
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/{tail:.*}", hook)
        return app


ServerFactory = Callable[[web.Application], Awaitable[Any]]


async def _receiver(aiohttp_server: ServerFactory) -> tuple[Receiver, str]:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    return receiver, f"http://127.0.0.1:{server.port}"


async def _wait(predicate: Callable[[], bool]) -> None:
    await eventually(predicate, "the condition")


async def test_webhooks_get_the_event_with_the_token(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    receiver, base = await _receiver(aiohttp_server)
    store = create_store("memory://")
    client = await aiohttp_client(
        make_app(
            store,
            api_key="notifier-secret",
            webhook=f"{base}/global",
            webhook_prefixes=[f"{base}/case/"],
        )
    )
    api = api_of(client)
    case = Case(name="hooked", webhooks=[f"{base}/case/1", f"{base}/other"])
    await api.notify("update_case", case, {"why": "test"})
    # Every delivery started is done: what was not called by then never will be.
    await api.notifier.flush()
    # The disallowed URL stored on the case was never called.
    assert sorted(path for path, _, _ in receiver.received) == ["/case/1", "/global"]
    for _path, token, body in receiver.received:
        assert token == "notifier-secret"
        event = Event.from_dict(body)
        assert event.category == "update_case"
        assert event.source == "test"
        assert event.case.guid == case.guid
        assert event.ext == {"why": "test"}
    await store.close()


async def test_webhooks_retry_on_500(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    receiver, base = await _receiver(aiohttp_server)
    receiver.failures_left = 2
    store = create_store("memory://")
    client = await aiohttp_client(
        make_app(store, webhook=f"{base}/global", webhook_backoff=0.01, webhook_retries=3)
    )
    api = api_of(client)
    await api.notify("update_case", CASE)
    # The delivery is done (two failures, one success): no fourth attempt.
    await api.notifier.flush()
    assert len(receiver.received) == 3
    await store.close()


async def test_slow_webhooks_time_out_and_never_block_notify(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    receiver, base = await _receiver(aiohttp_server)
    receiver.delay = 3600  # never answers in time
    store = create_store("memory://")
    client = await aiohttp_client(
        make_app(
            store,
            webhook=f"{base}/global",
            webhook_timeout=0.5,
            webhook_retries=1,
            webhook_backoff=0.01,
        )
    )
    api = api_of(client)
    await api.notify("update_case", CASE)
    # notify returned with its delivery still running (it lasts two timeouts).
    assert api.notifier.pending == 1
    # One attempt, its timeout, one retry, its timeout: then the notifier gives up.
    await api.notifier.flush()
    assert api.notifier.pending == 0
    assert len(receiver.received) == 2
    await store.close()


async def test_check_webhooks_refuses_urls_outside_the_prefixes() -> None:
    from fusion.server.event import WebhookNotAllowedError

    api = FusionEventAPI(FusionEventConfig(webhook_prefixes=["https://hooks.example.org/"]))
    api.check_webhooks(["https://hooks.example.org/a", "https://hooks.example.org/b?x=1"])
    for url in [
        "http://127.0.0.1:6379/",
        "https://hooks.example.org.evil.net/",
        "http://hooks.example.org/a",
        "",
    ]:
        with pytest.raises(WebhookNotAllowedError):
            api.check_webhooks([url])
    closed = FusionEventAPI(FusionEventConfig())
    with pytest.raises(WebhookNotAllowedError, match="disabled"):
        closed.check_webhooks(["https://hooks.example.org/a"])
    closed.check_webhooks([])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"webhook_prefixes": ["https://hooks.example.org"]}, "webhook_prefixes[0]"),
        ({"webhook_prefixes": ["ftp://hooks.example.org/"]}, "webhook_prefixes[0]"),
        ({"webhook_ssl": {"cafile": "/nonexistent/ca.pem"}}, "webhook_ssl"),
        ({"webhook_ssl": "not-a-fingerprint"}, "webhook_ssl"),
        ({"keepalive": 0}, "keepalive"),
    ],
)
def test_config_errors_name_the_setting(options: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(options, FusionEventConfig)


async def test_watchers_of_other_replicas_expire(
    store: SharedStore, store_clock: StoreClock
) -> None:
    from fusion.server.event import CaseWatchers

    # Long enough on Redis for the steps before it ends, on any load.
    lease = 3.0
    first = CaseWatchers(store, lease=lease)
    second = CaseWatchers(store, lease=lease)
    assert first.add(CASE.guid, "alice")
    assert not first.add(CASE.guid, "alice")
    await first.publish(CASE.guid)
    assert second.add(CASE.guid, "bob")
    await second.publish(CASE.guid)
    assert await second.usernames(CASE.guid) == ["alice", "bob"]
    assert await first.usernames(CASE.guid) == ["alice", "bob"]
    # Alice's last stream on the first replica ends: gone everywhere.
    assert not first.remove(CASE.guid, "alice")
    assert first.remove(CASE.guid, "alice")
    await first.publish(CASE.guid)
    assert await second.usernames(CASE.guid) == ["bob"]
    # A replica that dies without a word stops counting once its lease ends.
    first.add(CASE.guid, "carol")
    await first.publish(CASE.guid)
    assert await second.usernames(CASE.guid) == ["bob", "carol"]

    async def only_bob() -> bool:
        return await second.usernames(CASE.guid) == ["bob"]

    await store_clock.advance(lease, only_bob, "the dead replica's lease ended")
