"""The builder: one configuration in, one aiohttp application out.

A service's ``main`` is a few lines::

    server = FusionServer(load_config("timeline.yml"), case_type=TimelineCase)
    server.add_routes([web.get("/api/timeline/{case_guid}", timeline)])
    server.run()

or a subclass of :class:`FusionServer` overriding the ``create_*`` factories
(its own storage or case API) and :meth:`setup_routes`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from fusion.concept import Case, Constant
from fusion.helper.http_envelope import envelope_middleware
from fusion.helper.http_request import BODY_TIMEOUT, IPNetwork
from fusion.helper.pubsub import FusionPubSub
from fusion.helper.store import SharedStore, StoreUnavailableError, create_store
from fusion.helper.tracing import FusionAccessLogger, setup_request_ids
from fusion.server.appkeys import CONFIG, EVENTS, PUBSUB, STORAGE, STORE
from fusion.server.auth.api import FusionAuthAPI
from fusion.server.auth.backend import FusionAuthBackend
from fusion.server.auth.config import FusionAuthAPIConfig
from fusion.server.case.api import FusionCaseAPI
from fusion.server.config import FusionServerConfig, ServerConfig
from fusion.server.constant.api import FusionConstantAPI
from fusion.server.cors import setup_cors
from fusion.server.download.api import FusionDownloadAPI
from fusion.server.event.api import FusionEventAPI
from fusion.server.health import FusionHealthAPI
from fusion.server.info.api import FusionInfoAPI
from fusion.server.openapi import setup_openapi
from fusion.server.routing import expect_handler, with_expect_handler
from fusion.server.storage import FusionStorage
from fusion.server.storage.sqlite import SQLiteStorage
from fusion.server.synchronizer.sync import FusionSynchronizer

__all__ = ["FusionServer", "expect_handler", "limit_connections", "serve_app"]

_LOGGER = logging.getLogger("fusion.server")


class _ConnectionLimiter:
    """Counts a server's open connections, in total and per peer address."""

    def __init__(
        self,
        server: web.Server,
        max_connections: int,
        max_per_address: int,
        exempt: Sequence[IPNetwork],
    ) -> None:
        self._accept = server.connection_made
        self._forget = server.connection_lost
        self._max_connections = max_connections
        self._max_per_address = max_per_address
        self._exempt = tuple(exempt)
        self._open: dict[RequestHandler, str | None] = {}
        self._per_address: Counter[str] = Counter()
        self._refusing = False

    def _counted_address(self, transport: Any) -> str | None:
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple) or not peer:
            return None  # a Unix socket: no address to count
        address = str(peer[0])
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return address
        if any(parsed in network for network in self._exempt):
            return None
        return address

    def connection_made(self, handler: RequestHandler, transport: Any) -> None:
        address = self._counted_address(transport)
        refusal = None
        if len(self._open) >= self._max_connections:
            refusal = f"{len(self._open)} connections open (server.max_connections)"
        elif address is not None and self._per_address[address] >= self._max_per_address:
            refusal = (
                f"{self._per_address[address]} connections open from {address}"
                " (server.max_connections_per_address)"
            )
        if refusal is not None:
            if not self._refusing:
                # Once per saturation, not once per refused connection.
                _LOGGER.warning("refusing connections: %s", refusal)
                self._refusing = True
            # Closed on the next loop iteration: the handler's task then has
            # started (Python < 3.12 starts it after this call), so it sees the
            # connection lost instead of failing an assertion in aiohttp.
            asyncio.get_running_loop().call_soon(transport.close)
            return
        self._refusing = False
        self._open[handler] = address
        if address is not None:
            self._per_address[address] += 1
        self._accept(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if handler in self._open:
            address = self._open.pop(handler)
            if address is not None:
                self._per_address[address] -= 1
                if self._per_address[address] <= 0:
                    del self._per_address[address]
        self._forget(handler, exc)


def limit_connections(
    server: web.Server,
    *,
    max_connections: int,
    max_per_address: int,
    exempt: Sequence[IPNetwork] = (),
) -> None:
    """Close, at once, connections to ``server`` past the caps.

    At most ``max_connections`` open connections, and ``max_per_address`` from
    one peer address (peers in ``exempt``, the trusted proxies, count only
    towards the total). ``server`` is a runner's ``web.Server``
    (``runner.server`` after ``await runner.setup()``).
    """
    limiter = _ConnectionLimiter(server, max_connections, max_per_address, exempt)
    # aiohttp has no connection cap; every RequestHandler reports to these two
    # methods of its Server as the connection opens and closes.
    server.connection_made = limiter.connection_made  # type: ignore[method-assign]
    server.connection_lost = limiter.connection_lost  # type: ignore[method-assign]


async def serve_app(
    app: web.Application,
    server_config: ServerConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, with the caps and timeouts of ``server_config``.

    The one way the framework serves an application (:meth:`FusionServer.serve`
    and ``fusion-server serve``, with or without ``--app``): the access log,
    ``max_connections`` and ``max_connections_per_address``,
    ``keepalive_timeout`` and ``body_timeout`` (unless ``app`` sets its own),
    and on a signal ``shutdown_timeout`` seconds for running requests to
    finish before they are cancelled. (``max_body_size`` is the
    application's ``client_max_size``, set where it is made.) ``host`` and
    ``port`` default to ``server_config``'s. Call it from the main thread
    (signal handlers). ``reuse_port``: bind with SO_REUSEPORT, so that
    several processes serve one port (``fusion-server serve --workers N``).
    """
    # An application's own handler_args and BODY_TIMEOUT (FusionServer.build
    # sets both from the same config) win over these defaults.
    app.setdefault(BODY_TIMEOUT, server_config.body_timeout)
    runner = web.AppRunner(
        app,
        access_log=_LOGGER.getChild("access") if server_config.access_log else None,
        access_log_class=FusionAccessLogger,
        shutdown_timeout=server_config.shutdown_timeout,
        keepalive_timeout=server_config.keepalive_timeout,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    events = app.get(EVENTS)
    streams = webhooks = 0
    try:
        await runner.setup()
        assert runner.server is not None  # set by setup()
        limit_connections(
            runner.server,
            max_connections=server_config.max_connections,
            max_per_address=server_config.max_connections_per_address,
            exempt=server_config.trusted_proxy_networks,
        )
        site = web.TCPSite(
            runner,
            host or server_config.host,
            port if port is not None else server_config.port,
            reuse_port=reuse_port or None,
        )
        await site.start()
        _LOGGER.info(
            "serving on %s (pid %d)",
            ", ".join(f"http://{host}:{port}" for host, port, *_ in runner.addresses),
            os.getpid(),
        )
        await stop.wait()
        if isinstance(events, FusionEventAPI):
            streams, webhooks = events.open_streams, events.notifier.pending
        _LOGGER.info(
            "stopping on %s: %d open event streams, %d webhook deliveries pending",
            received[0].name if received else "request",
            streams,
            webhooks,
        )
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    abandoned = events.notifier.abandoned if isinstance(events, FusionEventAPI) else 0
    _LOGGER.info(
        "stopped: %d event streams ended, webhook deliveries: %d waited for, %d abandoned;"
        " shared store and storage closed",
        streams,
        max(0, webhooks - abandoned),
        abandoned,
    )


class FusionServer:
    """Assembles the APIs enabled in ``config`` into an application.

    ``case_type`` and ``constant_type`` are the service's Concept subclasses;
    ``storage``, ``store`` and ``auth_backend`` replace the defaults built
    from the configuration (SQLite in ``storage.data_dir``, the store named by
    ``shared_store.url``, the backend of ``auth.backend``).
    """

    def __init__(
        self,
        config: FusionServerConfig,
        *,
        case_type: type[Case] = Case,
        constant_type: type[Constant] = Constant,
        storage: FusionStorage | None = None,
        store: SharedStore | None = None,
        auth_backend: FusionAuthBackend | None = None,
    ) -> None:
        self.config = config
        self.case_type = case_type
        self.constant_type = constant_type
        self.storage = storage
        self.store = store
        self.auth_backend = auth_backend
        self.auth_api: FusionAuthAPI | None = None
        self.case_api: FusionCaseAPI[Any] | None = None
        self.info_api: FusionInfoAPI | None = None
        self.constant_api: FusionConstantAPI[Any] | None = None
        self.event_api: FusionEventAPI | None = None
        self.download_api: FusionDownloadAPI | None = None
        self.health_api: FusionHealthAPI | None = None
        self.pubsub: FusionPubSub | None = None
        self._routes: list[web.AbstractRouteDef] = []
        self._middlewares: list[Any] = []

    # -- factories a service may override ----------------------------------------
    def create_store(self) -> SharedStore:
        return create_store(self.config.shared_store.url)

    def create_storage(self) -> FusionStorage:
        return SQLiteStorage(self.config.storage.path, case_type=self.case_type)

    def create_auth_api(self) -> FusionAuthAPI:
        # Other APIs authenticate through it: without an auth section it still
        # exists, with no backend and no keys, so protected routes answer 401.
        config = self.config.auth if self.config.auth is not None else FusionAuthAPIConfig()
        return FusionAuthAPI(
            config,
            self.auth_backend,
            trusted_proxies=self.config.server.trusted_proxy_networks,
            max_body_size=self.config.server.max_body_size,
        )

    def create_case_api(self) -> FusionCaseAPI[Any] | None:
        if self.config.case is None:
            return None
        return FusionCaseAPI(
            self.config.case, self.case_type, max_body_size=self.config.server.max_body_size
        )

    def create_info_api(self) -> FusionInfoAPI | None:
        return None if self.config.info is None else FusionInfoAPI(self.config.info)

    def create_constant_api(self) -> FusionConstantAPI[Any] | None:
        if self.config.constant is None:
            return None
        return FusionConstantAPI(self.config.constant, self.constant_type)

    def create_event_api(self) -> FusionEventAPI | None:
        return None if self.config.event is None else FusionEventAPI(self.config.event)

    def create_download_api(self) -> FusionDownloadAPI | None:
        if self.config.download is None:
            return None
        return FusionDownloadAPI(self.config.download)

    def create_health_api(self) -> FusionHealthAPI | None:
        return None if self.config.health is None else FusionHealthAPI(self.config.health)

    def create_synchronizer(self) -> FusionSynchronizer | None:
        """The service's synchronizer, run while the app runs (none by default).

        Override: ``return FusionSynchronizer(self.config.synchronizer or
        FusionSynchronizerConfig(), self.storage, self.store, sync_case=job,
        pubsub=self.pubsub)``.
        """
        return None

    # -- service additions ----------------------------------------------------------
    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Routes of the service, added after the framework's when the app is built."""
        self._routes.extend(routes)

    def add_middleware(self, middleware: Any) -> None:
        """A middleware of the service, run inside the envelope one."""
        self._middlewares.append(middleware)

    def setup_routes(self, app: web.Application) -> None:
        """Hook for subclasses: add routes, sub-apps or cleanup contexts to ``app``."""

    # -- building ------------------------------------------------------------------
    def build(self) -> web.Application:
        """A new application with the store, the storage and every enabled API."""
        server = self.config.server
        app = web.Application(
            # Request bodies are capped where they are read (read_json,
            # read_concept, client_max_size), so no size middleware here.
            middlewares=[envelope_middleware(), *self._middlewares],
            client_max_size=server.max_body_size,
            # Also bounds the wait for a request's headers (aiohttp has no header
            # timeout): the idle timer runs until a whole request has arrived.
            # auto_decompress off: bodies are decoded, capped, where they are read.
            handler_args={"keepalive_timeout": server.keepalive_timeout, "auto_decompress": False},
        )
        app[CONFIG] = self.config
        app[BODY_TIMEOUT] = server.body_timeout
        if self.store is None:
            self.store = self.create_store()
        if self.storage is None:
            self.storage = self.create_storage()
        app[STORE] = self.store
        app[STORAGE] = self.storage
        # One upstream subscription per process, shared by events and synchronizer.
        self.pubsub = app[PUBSUB] = FusionPubSub(self.store)
        app.cleanup_ctx.append(self._lifecycle)
        if self.config.metrics is not None:
            from fusion.server.metrics.api import FusionMetricsAPI  # prometheus-client

            FusionMetricsAPI(self.config.metrics).setup(app)
        self.auth_api = self.create_auth_api()
        self.auth_api.setup(app)
        self.info_api = self.create_info_api()
        if self.info_api is not None:
            self.info_api.setup(app)
        self.constant_api = self.create_constant_api()
        if self.constant_api is not None:
            self.constant_api.setup(app)
        self.case_api = self.create_case_api()
        if self.case_api is not None:
            self.case_api.setup(app)
        self.event_api = self.create_event_api()
        if self.event_api is not None:
            self.event_api.setup(app)
        self.download_api = self.create_download_api()
        if self.download_api is not None:
            self.download_api.setup(app)
        self.health_api = self.create_health_api()
        if self.health_api is not None:
            self.health_api.setup(app)
        if self.config.cors is not None:
            setup_cors(app, self.config.cors)
        # Last, so its middleware is the first: every answer carries the id.
        setup_request_ids(app)
        synchronizer = self.create_synchronizer()
        if synchronizer is not None:
            app.cleanup_ctx.append(synchronizer.cleanup_ctx)
        self.setup_routes(app)
        app.router.add_routes(with_expect_handler(route) for route in self._routes)
        setup_openapi(app)  # describes every route above (GET /api/openapi.json)
        return app

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        store = app[STORE]
        storage = app[STORAGE]
        try:
            await store.ping()
        except StoreUnavailableError as exc:
            # Not fatal: routes that need the store answer 503 until it is back.
            _LOGGER.warning("shared store %s unavailable at startup: %s", store.url, exc)
        await storage.startup()
        try:
            yield
        finally:
            try:
                await app[PUBSUB].close()
                await storage.shutdown()
            finally:
                await store.close()

    async def serve(
        self, *, host: str | None = None, port: int | None = None, reuse_port: bool = False
    ) -> None:
        """Build the application and serve it until SIGINT or SIGTERM (see :func:`serve_app`).

        ``host`` and ``port`` default to ``config.server``'s.
        """
        await serve_app(
            self.build(), self.config.server, host=host, port=port, reuse_port=reuse_port
        )

    def run(self, *, host: str | None = None, port: int | None = None) -> None:
        """Serve until SIGINT or SIGTERM, then shut down cleanly (see :meth:`serve`)."""
        asyncio.run(self.serve(host=host, port=port))
