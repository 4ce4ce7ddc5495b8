"""FusionNotifier against a real aiohttp webhook receiver on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fusion_testing.clock import WAIT
from fusion_testing.services import free_port
from fusion_testing.tls import make_tls_files

from fusion.concept import Case, Event
from fusion.helper.notifier import NOTIFIER_TOKEN_HEADER, FusionNotifier, case_channel
from fusion.helper.pubsub import FusionPubSub
from fusion.helper.store import create_store

TOKEN = "notifier-secret"


@dataclass
class Receiver:
    """A webhook receiver: answers ``statuses`` in turn (then 200), after ``delay``."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"status": status}, status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = web.Application()
    app.router.add_post("/{name}", state.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


def _notifier(pubsub: FusionPubSub, **options: Any) -> FusionNotifier:
    options.setdefault("backoff", 0.01)
    return FusionNotifier(pubsub, token=TOKEN, **options)


def _event(ext: dict[str, Any] | None = None, **case: Any) -> Event[Case]:
    return Event(source="tests", category="update_case", case=Case(name="case", **case), ext=ext)


async def test_case_channel() -> None:
    case = Case(name="x")
    assert case_channel(case.guid) == f"events:case:{case.guid}"
    assert case_channel(str(case.guid).upper()) == f"events:case:{case.guid}"


async def test_notify_publishes_on_case_channel_with_history(pubsub: FusionPubSub) -> None:
    notifier = _notifier(pubsub, history=10, history_ttl=60)
    event = _event(ext={"k": "v"})
    try:
        async with pubsub.subscribe(case_channel(event.case.guid)) as subscription:
            event_id = await notifier.notify(event)
            message = await asyncio.wait_for(anext(subscription), 2)
        assert event_id is not None
        assert message.id == event_id
        assert Event.from_json(message.data) == event
        kept = await pubsub.history(case_channel(event.case.guid))
        assert [m.id for m in kept] == [event_id]
    finally:
        await notifier.close()


async def test_notify_without_history_returns_none(pubsub: FusionPubSub) -> None:
    notifier = _notifier(pubsub)
    event = _event()
    try:
        async with pubsub.subscribe(case_channel(event.case.guid)) as subscription:
            assert await notifier.notify(event) is None
            message = await asyncio.wait_for(anext(subscription), 2)
        assert message.id is None
        assert await pubsub.history(case_channel(event.case.guid)) == []
    finally:
        await notifier.close()


async def test_webhooks_get_event_json_and_token(pubsub: FusionPubSub, receiver: Receiver) -> None:
    notifier = _notifier(pubsub, global_webhook=f"{receiver.url}/global")
    event = _event(webhooks=[f"{receiver.url}/case"])
    try:
        # The global webhook listed again by the case is called once.
        await notifier.notify(event, [f"{receiver.url}/case", f"{receiver.url}/global"])
        await notifier.flush(5)
    finally:
        await notifier.close()
    assert sorted(path for path, _, _ in receiver.requests) == ["/case", "/global"]
    for _, headers, body in receiver.requests:
        assert headers[NOTIFIER_TOKEN_HEADER] == TOKEN
        assert headers["Content-Type"] == "application/json"
        assert body == event.to_json()
        assert Event.from_json(body) == event


async def test_retries_on_500_then_succeeds(
    pubsub: FusionPubSub, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500, 503]
    notifier = _notifier(pubsub, retries=3)
    try:
        await notifier.notify(_event(), [f"{receiver.url}/hook"])
        await notifier.flush(5)
    finally:
        await notifier.close()
    assert len(receiver.requests) == 3
    assert "failed after" not in caplog.text


async def test_gives_up_after_retries(
    pubsub: FusionPubSub, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500] * 10
    notifier = _notifier(pubsub, retries=2, backoff=0.02)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="fusion.helper.notifier"):
            await notifier.notify(_event(), [f"{receiver.url}/hook?secret=s3cr3t"])
            await notifier.flush(5)
        # Exponential backoff: 0.02 then 0.04 s between the three attempts.
        assert time.monotonic() - started >= 0.06
    finally:
        await notifier.close()
    assert len(receiver.requests) == 3
    assert "failed after 3 attempts" in caplog.text
    assert "HTTP 500" in caplog.text
    assert "s3cr3t" not in caplog.text


async def test_4xx_is_not_retried(
    pubsub: FusionPubSub, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [404, 404]
    notifier = _notifier(pubsub, retries=3)
    try:
        with caplog.at_level(logging.WARNING, logger="fusion.helper.notifier"):
            await notifier.notify(_event(), [f"{receiver.url}/hook"])
            await notifier.flush(5)
    finally:
        await notifier.close()
    assert len(receiver.requests) == 1
    assert "refused the event: HTTP 404" in caplog.text


async def test_timeout_is_retried_then_given_up(
    pubsub: FusionPubSub, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.delay = 3600  # never answers: only the timeouts end the delivery
    notifier = _notifier(pubsub, timeout=0.1, retries=1)
    try:
        with caplog.at_level(logging.WARNING, logger="fusion.helper.notifier"):
            await notifier.notify(_event(), [f"{receiver.url}/slow"])
            assert notifier.pending == 1  # the caller never waits for the delivery
            await asyncio.wait_for(notifier.flush(), WAIT)
        assert notifier.pending == 0
    finally:
        await notifier.close()
    assert len(receiver.requests) == 2
    assert "failed after 2 attempts" in caplog.text


async def test_unreachable_and_malformed_webhooks_are_logged(
    pubsub: FusionPubSub, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = _notifier(pubsub, retries=1)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    try:
        with caplog.at_level(logging.WARNING, logger="fusion.helper.notifier"):
            await notifier.notify(
                _event(),
                [dead, "not a url", "ftp://host/x", "http://[::1", "http://h:99999/x", "http:///x"],
            )
            await notifier.flush(5)
    finally:
        await notifier.close()
    assert "failed after 2 attempts" in caplog.text
    assert caplog.text.count("skipped") == 5
    assert "Traceback" not in caplog.text


async def test_close_cancels_pending_deliveries(pubsub: FusionPubSub, receiver: Receiver) -> None:
    receiver.delay = 3600
    notifier = _notifier(pubsub, timeout=3600)
    await notifier.notify(_event(), [f"{receiver.url}/hang"])
    assert notifier.pending == 1
    # Only cancelling the delivery ends it: close returns after its grace.
    await asyncio.wait_for(notifier.close(grace=0.1), WAIT)
    assert notifier.pending == 0
    with pytest.raises(RuntimeError, match="closed"):
        await notifier.notify(_event())


async def test_invalid_options() -> None:
    store = create_store()
    hub = FusionPubSub(store)
    with pytest.raises(ValueError, match="retries"):
        FusionNotifier(hub, token=TOKEN, retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        FusionNotifier(hub, token=TOKEN, timeout=0)


# -- TLS: verification, custom CA, pinned fingerprint ----------------------------------
@dataclass
class TLSReceiver:
    url: str
    ca_file: Path
    der: bytes
    receiver: Receiver


@pytest.fixture
async def tls_receiver(tmp_path: Path) -> AsyncIterator[TLSReceiver]:
    tls = make_tls_files(tmp_path)
    ca_file = tls.ca_file
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    state = Receiver()
    app = web.Application()
    app.router.add_post("/{name}", state.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    der = ssl.PEM_cert_to_DER_cert(tls.cert_file.read_text())
    try:
        yield TLSReceiver(f"https://127.0.0.1:{port}/hook", ca_file, der, state)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("mode", ["ca", "fingerprint", "no-verify"])
async def test_tls_webhook_delivered(
    pubsub: FusionPubSub, tls_receiver: TLSReceiver, mode: str
) -> None:
    options: dict[str, ssl.SSLContext | aiohttp.Fingerprint | bool] = {
        "ca": ssl.create_default_context(cafile=tls_receiver.ca_file),
        "fingerprint": aiohttp.Fingerprint(hashlib.sha256(tls_receiver.der).digest()),
        "no-verify": False,
    }
    notifier = _notifier(pubsub, ssl=options[mode])
    try:
        await notifier.notify(_event(), [tls_receiver.url])
        await notifier.flush(5)
    finally:
        await notifier.close()
    assert len(tls_receiver.receiver.requests) == 1
    assert tls_receiver.receiver.requests[0][1][NOTIFIER_TOKEN_HEADER] == TOKEN


@pytest.mark.parametrize("mode", ["default", "wrong-fingerprint"])
async def test_tls_webhook_refused_without_retry(
    pubsub: FusionPubSub,
    tls_receiver: TLSReceiver,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    # The default verifies against the system CAs, which do not know the test CA.
    notifier = (
        _notifier(pubsub, retries=3)
        if mode == "default"
        else _notifier(pubsub, retries=3, ssl=aiohttp.Fingerprint(hashlib.sha256(b"x").digest()))
    )
    try:
        with caplog.at_level(logging.INFO, logger="fusion.helper.notifier"):
            await notifier.notify(_event(), [tls_receiver.url])
            await notifier.flush(5)
    finally:
        await notifier.close()
    assert tls_receiver.receiver.requests == []
    assert "TLS verification failed" in caplog.text
    assert "attempt 1 failed" not in caplog.text
