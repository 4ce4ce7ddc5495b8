"""Live case events: server-sent events, resume with Last-Event-ID, webhooks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import msgspec
from aiohttp import web

from fusion.concept import Case, Event, Identity
from fusion.helper.http_envelope import FusionHTTPError
from fusion.helper.http_request import get_guid
from fusion.helper.notifier import FusionNotifier, case_channel
from fusion.helper.pubsub import FusionPubSub, Subscription
from fusion.helper.sse import SSE_KEEPALIVE, format_sse
from fusion.helper.store import SharedStore, StoreMessage, StoreUnavailableError, message_id_key
from fusion.server._lifecycle import started
from fusion.server.appkeys import AUTH, EVENTS, PUBSUB, STORAGE, STORE
from fusion.server.auth.access import Action
from fusion.server.auth.api import SESSION_ENDED_CHANNEL, FusionAuthAPI
from fusion.server.auth.caller import Caller
from fusion.server.event.config import FusionEventConfig
from fusion.server.event.publisher import CaseEventPublisher
from fusion.server.event.watchers import CaseWatchers
from fusion.server.openapi import EVENT_STREAM, operation
from fusion.server.routing import expect_handler

__all__ = [
    "SUBSCRIBE_EVENTS",
    "CaseReadAuthorizer",
    "CaseReadCheck",
    "FusionEventAPI",
    "WebhookNotAllowedError",
]

_LOGGER = logging.getLogger(__name__)

CaseReadAuthorizer = Callable[[web.Request, UUID], Awaitable[tuple[Identity, Case]]]
"""Who is calling and the case they may read; raises FusionHTTPError 401/403/404 otherwise."""

CaseReadCheck = Callable[[Caller, Case], bool]
"""Whether the caller may still read the case an event carries."""

_EMPTY_HISTORY_ID = "0-0"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Proxies such as nginx would otherwise hold events back in their buffers.
    "X-Accel-Buffering": "no",
}


SUBSCRIBE_EVENTS = Action("subscribe_events")
"""Read access to the case: what following its events needs."""

# The event API's own presence events carry the case as it was when the
# stream behind them opened: not an authority on who may read it now.
_PRESENCE = frozenset({"subscribe", "unsubscribe"})
_DELETED = "delete_case"


class _EventHead(msgspec.Struct):
    category: str = ""
    case: Case | None = None


_HEAD_DECODER = msgspec.json.Decoder(_EventHead)


class WebhookNotAllowedError(ValueError):
    """A case webhook URL is not under one of the configured prefixes."""


class _Stream:
    """One open event stream, tracked so shutdown, logout and the limits can end it."""

    __slots__ = (
        "caller",
        "case_guid",
        "ended",
        "expires",
        "last_write",
        "request",
        "response",
        "session_id",
        "subscription",
        "task",
        "writing",
    )

    def __init__(
        self, request: web.Request, case_guid: UUID, caller: Caller, subscription: Subscription
    ) -> None:
        self.request = request
        self.case_guid = case_guid
        self.caller = caller
        self.session_id = caller.session_id
        # A bearer token's expiry (epoch seconds).
        self.expires = caller.expires
        self.subscription = subscription
        self.task = asyncio.current_task()
        self.response: web.StreamResponse | None = None
        self.last_write = 0.0
        self.writing = False
        self.ended: str | None = None
        """Why the server ended the stream (None: it has not)."""

    @property
    def username(self) -> str:
        return self.caller.username

    def end(self, reason: str) -> None:
        """Stop at once: nothing queued or published later is sent."""
        if self.ended is None:
            self.ended = reason
        self.subscription.close(discard=True)

    async def keepalive(self) -> None:
        response = self.response
        if response is None:
            return
        try:
            await response.write(SSE_KEEPALIVE)
        except (ConnectionError, RuntimeError):
            # The client is gone (or the response already ended): end the stream.
            self.subscription.close(discard=True)


class FusionEventAPI:
    """``GET /api/events/case/{case_guid}`` and :meth:`notify` (the case API's event sink)."""

    def __init__(
        self,
        config: FusionEventConfig,
        *,
        authorize: CaseReadAuthorizer | None = None,
        may_read: CaseReadCheck | None = None,
        store: SharedStore | None = None,
    ) -> None:
        """``authorize`` decides who may open a stream (default: the auth API);
        ``may_read`` whether a subscriber may still read the case each event
        carries (default: ``case_access`` of the auth API, when the app has one;
        with neither, events are not checked)."""
        self.config = config
        self._authorize = authorize
        self._may_read = may_read
        self._auth: FusionAuthAPI | None = None
        self._store = store
        self._pubsub: FusionPubSub | None = None
        self._own_pubsub = False
        self._publisher: CaseEventPublisher | None = None
        self._watchers: CaseWatchers | None = None
        self._streams: set[_Stream] = set()
        # Streams admitted (being set up or open), for the limits.
        self._admitted = 0
        self._admitted_by_username: Counter[str] = Counter()
        self._background: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._closing = False
        self._setup_slots = asyncio.Semaphore(config.setup_concurrency)
        self._last_frame: tuple[StoreMessage, bytes, _EventHead | None] | None = None
        self.on_event_sent: Callable[[], None] | None = None
        """Called after each event written to a stream (metrics count them); it
        must not raise nor block."""

    # -- wiring --------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        app[EVENTS] = self
        # No HEAD: it would open a stream that never sends a byte.
        app.router.add_get(
            "/api/events/case/{case_guid}",
            self._handle_events,
            allow_head=False,
            expect_handler=expect_handler,
        )
        app.cleanup_ctx.append(self._lifecycle)
        # Open streams end as soon as shutdown begins: the server then waits for
        # running handlers, and cleanup contexts only run after that wait.
        app.on_shutdown.append(self._end_streams)

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self._start(app)
        try:
            yield
        finally:
            await self.close()

    def _start(self, app: web.Application) -> None:
        if self._store is None:
            self._store = app[STORE]
        pubsub = app.get(PUBSUB)
        if pubsub is None or pubsub.store is not self._store:
            pubsub = FusionPubSub(self._store)
            self._own_pubsub = True
        self._pubsub = pubsub
        # The one publishing path, shared with worker processes (from_config).
        self._publisher = CaseEventPublisher(self.config, pubsub)
        self._watchers = CaseWatchers(self._store, max_usernames=self.config.max_watchers)
        self._auth = app.get(AUTH)
        if self._may_read is None and self._auth is not None:
            auth = self._auth

            def may_read(caller: Caller, case: Case) -> bool:
                return auth.case_access(caller, case) is not None

            self._may_read = may_read
        self._closing = False
        self._loops = [
            asyncio.create_task(self._watchers.refresh_forever()),
            asyncio.create_task(self._keepalive_forever()),
            asyncio.create_task(self._check_sessions_forever()),
            asyncio.create_task(self._follow_logouts()),
        ]

    def _sent(self) -> None:
        if self.on_event_sent is not None:
            self.on_event_sent()

    async def _end_streams(self, app: web.Application) -> None:
        await self._close_streams()

    @property
    def store(self) -> SharedStore:
        return started(self._store, "FusionEventAPI")

    @property
    def pubsub(self) -> FusionPubSub:
        return started(self._pubsub, "FusionEventAPI")

    @property
    def publisher(self) -> CaseEventPublisher:
        """What :meth:`notify` publishes through (the same as a worker's)."""
        return started(self._publisher, "FusionEventAPI")

    @property
    def notifier(self) -> FusionNotifier:
        return self.publisher.notifier

    @property
    def watchers(self) -> CaseWatchers:
        return started(self._watchers, "FusionEventAPI")

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # -- services' side ----------------------------------------------------------
    def webhook_allowed(self, url: str) -> bool:
        """True when ``url`` is under one of the configured prefixes (see
        :meth:`FusionEventConfig.webhook_allowed`)."""
        return self.config.webhook_allowed(url)

    def check_webhooks(self, urls: list[str]) -> None:
        """Raise :class:`WebhookNotAllowedError` for a URL outside the allowed prefixes.

        The case API calls it on create and update and answers 400.
        """
        for url in urls:
            if not self.webhook_allowed(url):
                raise WebhookNotAllowedError(
                    f"webhook {url!r} is not allowed: case webhooks must start with one of "
                    f"{self.config.webhook_prefixes or 'nothing (case webhooks are disabled)'}"
                )

    async def notify(self, category: str, case: Case, ext: dict[str, Any] | None = None) -> None:
        """Send ``category`` about ``case`` to its watchers, its webhooks and the global one.

        Returns once the event is published; webhooks are posted in the
        background and never delay the caller. A worker process publishes the
        same way with :meth:`CaseEventPublisher.from_config`.
        """
        await self.publisher.notify(category, case, ext)

    # -- internals ---------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _read_access(self, request: web.Request, case_guid: UUID) -> tuple[Identity, Case]:
        if self._authorize is not None:
            return await self._authorize(request, case_guid)
        return await self.authorize_with_auth_api(request, case_guid)

    @staticmethod
    async def authorize_with_auth_api(
        request: web.Request, case_guid: UUID
    ) -> tuple[Identity, Case]:
        """The default authorizer: the server's auth API and storage (``app[AUTH]``,
        ``app[STORAGE]``): 401 without credentials, 404 unknown case, 403 no read access."""
        app = request.app
        auth = app.get(AUTH)
        storage = app.get(STORAGE)
        if auth is None or storage is None:
            raise FusionHTTPError(501, "event API has no authorizer")
        await auth.authenticate(request)
        case = await storage.retrieve_case(case_guid)
        if case is None:
            raise FusionHTTPError(404, f"case {case_guid} not found")
        identity = await auth.authorize(request, SUBSCRIBE_EVENTS, case)
        return identity, case

    def _admit(self, username: str) -> None:
        """Count one more stream, or answer 429 past the limits."""
        config = self.config
        if self._admitted >= config.max_streams:
            raise FusionHTTPError(
                429, f"too many event streams on this server (at most {config.max_streams})"
            )
        if self._admitted_by_username[username] >= config.max_streams_per_identity:
            raise FusionHTTPError(
                429,
                f"too many event streams for {username} "
                f"(at most {config.max_streams_per_identity})",
            )
        self._admitted += 1
        self._admitted_by_username[username] += 1

    def _release(self, username: str) -> None:
        self._admitted -= 1
        self._admitted_by_username[username] -= 1
        if self._admitted_by_username[username] <= 0:
            del self._admitted_by_username[username]

    async def _stream_events(
        self, request: web.Request, caller: Caller, case: Case, after_id: str
    ) -> web.StreamResponse:
        self._admit(caller.username)
        try:
            return await self._run_stream(request, caller, case, after_id)
        finally:
            self._release(caller.username)

    def _allowed(self, caller: Caller, head: _EventHead | None) -> bool:
        if head is None or head.case is None:
            return False  # not an event: nothing to check it against
        may_read = self._may_read
        return may_read is None or may_read(caller, head.case)

    async def _run_stream(
        self, request: web.Request, caller: Caller, case: Case, after_id: str
    ) -> web.StreamResponse:
        identity = caller.identity
        channel = case_channel(case.guid)
        subscription = self.pubsub.subscribe(
            channel,
            maxsize=self.config.queue_size,
            max_bytes=self.config.queue_bytes,
            end_on_loss=True,
        )
        stream = _Stream(request, case.guid, caller, subscription)
        response: web.StreamResponse | None = None
        joined = False
        try:
            # Bounded: a burst of new streams would otherwise run as many store
            # commands at once, and the Redis pool opens a connection for each.
            async with self._setup_slots:
                if not after_id:
                    # A fresh subscriber starts at the current end of the history:
                    # the id sent with its first event lets it resume from there.
                    after_id = _last_id(await self.pubsub.history(channel))
                # Subscribe before reading the history so nothing falls in between;
                # duplicates are skipped by id below. end_on_loss: after a store
                # outage the client reconnects with Last-Event-ID and catches up.
                await subscription.start()
                self._streams.add(stream)
                joined = True
                if self.watchers.add(case.guid, identity.username):
                    self._spawn(self._joined(case, identity.username))
                kept = await self.pubsub.history(channel)
                head = _last_id(kept)
                if message_id_key(after_id) > message_id_key(head):
                    # An id from the future (forged, or from a history since lost)
                    # would otherwise silence every live event as a "duplicate".
                    after_id = head
                missed = [message for message in kept if _is_after(message, after_id)]
                usernames = await self.watchers.usernames(case.guid)
            response = web.StreamResponse(headers=_SSE_HEADERS)
            await response.prepare(request)
            hello = Event(
                source=self.config.source,
                category="subscribers",
                case=case,
                ext={"usernames": usernames},
            )
            await response.write(format_sse(hello.to_json(), id=after_id))
            last_id = after_id
            for message in missed:
                if _is_after(message, last_id):
                    frame, about = self._frame(message)
                    # An older event may carry the case from before this
                    # caller could read it: skipped, not a reason to stop.
                    if self._allowed(caller, about):
                        await response.write(frame)
                        self._sent()
                    last_id = message.id or last_id
            loop = asyncio.get_running_loop()
            stream.last_write = loop.time()
            stream.response = response
            # Live messages come in publish order: once one is newer than what
            # the history gave, no later one can be a duplicate.
            deduplicate = True
            async for message in subscription:
                if deduplicate:
                    if not _is_after(message, last_id):
                        continue
                    deduplicate = False
                if stream.ended is not None:
                    break
                frame, about = self._frame(message)
                if not self._allowed(caller, about):
                    if about is not None and about.category in _PRESENCE:
                        continue
                    stream.end("read access to the case lost")
                    break
                stream.last_write = loop.time()
                stream.writing = True
                await response.write(frame)
                stream.writing = False
                self._sent()
                if about is not None and about.category == _DELETED:
                    stream.end("case deleted")
                    break
            if subscription.dropped:
                _LOGGER.warning(
                    "event stream of %s on case %s ended: too slow", identity.username, case.guid
                )
            elif stream.ended is not None:
                _LOGGER.info(
                    "event stream of %s on case %s ended: %s",
                    identity.username,
                    case.guid,
                    stream.ended,
                )
            stream.response = None  # no keepalive after the end
            await response.write_eof()
        except ConnectionError as exc:
            # The client went away (or stopped reading and was cut off): nothing
            # to tell it, and nothing worth a traceback.
            _LOGGER.debug(
                "event stream of %s on case %s: client gone (%r)",
                identity.username,
                case.guid,
                exc,
            )
        finally:
            subscription.close()
            self._streams.discard(stream)
            if joined and self.watchers.remove(case.guid, identity.username):
                self._spawn(self._left(case, identity.username))
        return response if response is not None else web.Response(status=204)

    async def _keepalive_forever(self) -> None:
        # One ticker for every stream rather than a timeout around each wait:
        # arming and cancelling a timer per event per subscriber costs more than
        # the write itself when a thousand streams watch a case.
        keepalive = self.config.keepalive
        send_timeout = self.config.send_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(keepalive, send_timeout) / 4)
            now = loop.time()
            for stream in list(self._streams):
                if stream.response is None:
                    continue
                if stream.writing:
                    if now - stream.last_write >= send_timeout:
                        self._cut_off(stream)
                elif now - stream.last_write >= keepalive:
                    stream.last_write = now
                    self._spawn(stream.keepalive())

    def _cut_off(self, stream: _Stream) -> None:
        # A client that does not read holds a write (and its buffered bytes)
        # forever: closing the connection frees them, and the stream's write
        # ends with a ConnectionError.
        transport = stream.request.transport
        stream.end("client not reading")
        if transport is not None and not transport.is_closing():
            _LOGGER.info(
                "event stream of %s on case %s: client not reading for %ss, connection closed",
                stream.username,
                stream.case_guid,
                self.config.send_timeout,
            )
            transport.abort()

    # -- sessions behind the streams --------------------------------------------
    def end_session_streams(self, session_id: str, reason: str = "session ended") -> int:
        """End this process's streams opened with ``session_id``; returns how many."""
        ended = [stream for stream in self._streams if stream.session_id == session_id]
        for stream in ended:
            stream.end(reason)
        return len(ended)

    async def check_sessions(self) -> None:
        """End the streams whose session is gone (logout, expiry, a new login)
        or whose bearer token expired: one store read for every session."""
        now = time.time()
        by_session: dict[str, list[_Stream]] = {}
        for stream in list(self._streams):
            if stream.expires is not None and stream.expires <= now:
                stream.end("token expired")
            elif stream.session_id is not None:
                by_session.setdefault(stream.session_id, []).append(stream)
        auth = self._auth
        if not by_session or auth is None:
            return
        session_ids = list(by_session)
        prefix = auth.sessions.prefix
        values = await self.store.get_many([prefix + session_id for session_id in session_ids])
        for session_id, value in zip(session_ids, values, strict=True):
            if value is None:
                for stream in by_session[session_id]:
                    stream.end("session ended")

    async def _check_sessions_forever(self) -> None:
        # The fallback of the logout announcements: sessions that expire or are
        # replaced, and announcements lost in a store outage.
        while True:
            await asyncio.sleep(self.config.session_check_interval)
            try:
                await self.check_sessions()
            except StoreUnavailableError as exc:
                _LOGGER.warning("cannot check the sessions of the event streams: %s", exc)

    async def _follow_logouts(self) -> None:
        # Every replica hears every logout, so a session's streams end at once wherever
        # they are. Subscribed whether or not this app has an auth API: another
        # process sharing the store may.
        while True:
            try:
                async with self.pubsub.subscribe(SESSION_ENDED_CHANNEL) as logouts:
                    async for message in logouts:
                        self.end_session_streams(message.data.decode(errors="replace"))
            except StoreUnavailableError as exc:
                _LOGGER.debug("logout announcements unavailable: %s", exc)
            except RuntimeError:
                return  # the pub/sub is closed: shutting down
            await asyncio.sleep(self.config.session_check_interval)

    def _frame(self, message: StoreMessage) -> tuple[bytes, _EventHead | None]:
        # Every subscriber of a channel gets the same message object from the
        # pub/sub fan-out: format and decode it once, not once per subscriber.
        cached = self._last_frame
        if cached is not None and cached[0] is message:
            return cached[1], cached[2]
        frame = format_sse(message.data, id=message.id)
        head: _EventHead | None
        try:
            head = _HEAD_DECODER.decode(message.data)
        except (msgspec.DecodeError, RecursionError):
            head = None
        self._last_frame = (message, frame, head)
        return frame, head

    async def _joined(self, case: Case, username: str) -> None:
        try:
            await self.watchers.publish(case.guid)
            await self._publish(
                Event(
                    source=self.config.source,
                    category="subscribe",
                    case=case,
                    ext={"username": username},
                ),
                webhooks=False,
            )
        except StoreUnavailableError as exc:
            _LOGGER.warning("cannot announce %s watching case %s: %s", username, case.guid, exc)

    async def _left(self, case: Case, username: str) -> None:
        try:
            await self.watchers.publish(case.guid)
            await self._publish(
                Event(
                    source=self.config.source,
                    category="unsubscribe",
                    case=case,
                    ext={"username": username},
                ),
                webhooks=False,
            )
        except StoreUnavailableError as exc:
            _LOGGER.warning("cannot announce %s leaving case %s: %s", username, case.guid, exc)

    @operation("A case's events", content_type=EVENT_STREAM, errors=(429,))
    async def _handle_events(self, request: web.Request) -> web.StreamResponse:
        if self._closing:
            raise FusionHTTPError(503, "server shutting down")
        case_guid = get_guid(request)
        identity, case = await self._read_access(request, case_guid)
        # How the caller authenticated (its session, a token's expiry), resolved
        # once per request by the auth API; a service's own authorizer vouches
        # for callers of its own.
        caller = None if self._auth is None else await self._auth.identify(request)
        if caller is None or caller.identity != identity:
            caller = Caller(identity, "service")
        last_event_id = request.headers.get("Last-Event-ID", "").strip()
        if message_id_key(last_event_id) == (-1, -1):
            last_event_id = ""
        return await self._stream_events(request, caller, case, last_event_id)

    async def _close_streams(self) -> None:
        """End every open stream and wait for them (``config.shutdown_timeout`` at most);
        new ones get 503 from now on."""
        self._closing = True
        streams = list(self._streams)
        for stream in streams:
            # The stream's loop sees its subscription end and finishes the response.
            stream.subscription.close()
        tasks = [stream.task for stream in streams if stream.task is not None]
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=self.config.shutdown_timeout)
            for task in stuck:
                # Blocked writing to a client that does not read.
                task.cancel()

    async def close(self) -> None:
        """End every open stream, then stop the API's tasks, notifier and pub/sub."""
        await self._close_streams()
        for loop_task in self._loops:
            loop_task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        # Presence updates of the streams just closed are let through (other
        # replicas would list those watchers until their lease ends otherwise),
        # but a store that does not answer must not hold shutdown.
        background = list(self._background)
        if background:
            _done, pending = await asyncio.wait(background, timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                _done, stuck = await asyncio.wait(pending, timeout=1.0)
                if stuck:
                    _LOGGER.warning("%d event tasks still running at shutdown", len(stuck))
        if self._publisher is not None:
            # Shutdown does not wait out slow webhook receivers, as a worker does.
            await self._publisher.close(grace=1.0)
        if self._own_pubsub and self._pubsub is not None:
            await self._pubsub.close()

    async def _publish(self, event: Event[Any], *, webhooks: bool) -> str | None:
        return await self.publisher.publish(event, webhooks=webhooks)


def _last_id(kept: list[StoreMessage]) -> str:
    return (kept[-1].id if kept else None) or _EMPTY_HISTORY_ID


def _is_after(message: StoreMessage, last_id: str) -> bool:
    return message.id is None or message_id_key(message.id) > message_id_key(last_id)
