"""Prometheus metrics of a Fusion server: a request middleware and the exposition route.

Imported only when the configuration has a ``metrics`` section (it imports
prometheus-client, the ``metrics`` extra). Every metric is labelled by the
route *template* (``/api/case/{case_guid}``, the aiohttp resource's canonical
path), never by the raw path, so GUIDs and tokens in URLs do not multiply the
series. Requests that match no route are labelled ``unmatched``.

Several worker processes (``fusion-server serve --workers N``) add up:
the master points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory for its
workers, each worker writes its values there, and whichever worker answers the
exposition reads them all (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

try:
    import prometheus_client
    from prometheus_client import multiprocess
except ImportError as _missing:  # pragma: no cover - exercised by the extra's absence
    raise ImportError(
        "the metrics section needs prometheus-client: pip install 'fusion-server[metrics]'"
    ) from _missing
from aiohttp import web

from fusion.server.appkeys import CONFIG, EVENTS
from fusion.server.event.api import FusionEventAPI
from fusion.server.metrics.config import FusionMetricsConfig

__all__ = ["MULTIPROC_DIR_ENV", "FusionMetricsAPI", "mark_worker_dead"]

_LOGGER = logging.getLogger("fusion.server.metrics")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The directory of prometheus-client's multiprocess mode (set by the master for its workers)."""

_UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LOGIN_ROUTE = "/api/auth/login"
_EVENTS_ROUTE = "/api/events/case/{case_guid}"


@dataclass(frozen=True)
class _Metrics:
    """The process's metrics, created once (prometheus-client registers them globally)."""

    requests: prometheus_client.Histogram
    request_bytes: prometheus_client.Counter
    response_bytes: prometheus_client.Counter
    login_failures: prometheus_client.Counter
    throttled_logins: prometheus_client.Counter
    unavailable: prometheus_client.Counter
    event_streams: prometheus_client.Gauge
    events_published: prometheus_client.Counter
    events_sent: prometheus_client.Counter
    webhook_deliveries: prometheus_client.Counter


@cache
def _metrics() -> _Metrics:
    route = ("route",)
    return _Metrics(
        # One histogram, no separate counter: its _count is the requests by
        # status, and each series updated costs a lock and a write per request
        # (a file write in multiprocess mode).
        requests=prometheus_client.Histogram(
            "fusion_http_request_duration_seconds",
            "Requests answered and the time to answer them (a stream: until it ends),"
            " by route template, method and status.",
            ("route", "method", "status"),
        ),
        request_bytes=prometheus_client.Counter(
            "fusion_http_request_body_bytes",
            "Request body bytes received (uploads), by route template.",
            route,
        ),
        response_bytes=prometheus_client.Counter(
            "fusion_http_response_body_bytes",
            "Streamed response body bytes sent (downloads, files, event streams),"
            " by route template.",
            route,
        ),
        login_failures=prometheus_client.Counter(
            "fusion_login_failures",
            "Logins refused (wrong credentials or bad body: 400 or 401 on POST /api/auth/login).",
        ),
        throttled_logins=prometheus_client.Counter(
            "fusion_login_throttled",
            "Logins refused by the throttle (429 on POST /api/auth/login).",
        ),
        unavailable=prometheus_client.Counter(
            "fusion_unavailable",
            "Answers 503 (the shared store or the storage did not answer), by route template.",
            route,
        ),
        event_streams=prometheus_client.Gauge(
            "fusion_event_streams_open",
            "Open event streams (subscribers connected to GET /api/events/case/{case_guid}).",
            multiprocess_mode="livesum",
        ),
        events_published=prometheus_client.Counter(
            "fusion_events_published",
            "Case events this process published, by category.",
            ("category",),
        ),
        events_sent=prometheus_client.Counter(
            "fusion_events_sent",
            "Events written to the event streams of this process's subscribers.",
        ),
        webhook_deliveries=prometheus_client.Counter(
            "fusion_webhook_deliveries",
            "Webhook deliveries this process finished, by outcome (delivered, refused,"
            " failed, tls_failed, skipped).",
            ("outcome",),
        ),
    )


class _RouteMetrics:
    """The labelled series of one route template and method, looked up once.

    (``labels()`` costs a lock and a tuple per call: on the hot path it
    would cost more than the counting itself.)
    """

    __slots__ = ("_method", "_requests", "_route", "request_bytes", "response_bytes", "statuses")

    def __init__(self, metrics: _Metrics, route: str, method: str) -> None:
        self._requests = metrics.requests
        self.request_bytes = metrics.request_bytes.labels(route)
        self.response_bytes = metrics.response_bytes.labels(route)
        self.statuses: dict[int, Any] = {}
        self._route = route
        self._method = method

    def requests(self, status: int) -> Any:
        counter = self.statuses.get(status)
        if counter is None:
            counter = self.statuses[status] = self._requests.labels(
                self._route, self._method, str(status)
            )
        return counter


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED


class FusionMetricsAPI:
    """Collects the request metrics of an application and serves their exposition.

    ``FusionServer.build`` sets it up when the configuration has a ``metrics``
    section; an application made otherwise calls ``FusionMetricsAPI(config).setup(app)``.
    """

    def __init__(self, config: FusionMetricsConfig) -> None:
        self.config = config
        self.metrics = _metrics()
        self._routes: dict[tuple[str, str], _RouteMetrics] = {}

    def setup(self, app: web.Application) -> None:
        """Add the middleware (outermost: it sees the final status) and the exposition."""
        app.middlewares.insert(0, self.middleware)
        # After every cleanup context's start (on_startup handlers added now run
        # after them): the event API's publisher exists by then.
        app.on_startup.append(self._observe_events)
        if self.config.port is None:
            app.router.add_get(self.config.path, self.exposition)
        else:
            app.cleanup_ctx.append(self._listener)

    async def _observe_events(self, app: web.Application) -> None:
        events = app.get(EVENTS)
        if not isinstance(events, FusionEventAPI):
            return
        metrics = self.metrics
        published = metrics.events_published
        events.publisher.on_publish = lambda event: published.labels(event.category).inc()
        deliveries = metrics.webhook_deliveries
        events.publisher.notifier.on_delivery = lambda outcome: deliveries.labels(outcome).inc()
        events.on_event_sent = metrics.events_sent.inc

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        route = _route_template(request)
        if route == self.config.path and self.config.port is None:
            return await handler(request)  # the scrapes themselves are not counted
        metrics = self.metrics
        # Any token is a method to aiohttp: unknown ones share one label.
        method = request.method if request.method in _METHODS else "other"
        series = self._routes.get((route, method))
        if series is None:
            series = self._routes[route, method] = _RouteMetrics(metrics, route, method)
        stream = route == _EVENTS_ROUTE
        if stream:
            metrics.event_streams.inc()
        started = time.perf_counter()
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            series.requests(status).observe(time.perf_counter() - started)
            if stream:
                metrics.event_streams.dec()
            received = request.content.total_bytes
            if received:
                series.request_bytes.inc(received)
            # Streamed bodies only (downloads, files, event streams): a JSON
            # answer's few bytes are not worth a write per request.
            if response is not None and response.prepared and response.body_length:
                series.response_bytes.inc(response.body_length)
            if status == 503:
                metrics.unavailable.labels(route).inc()
            if route == _LOGIN_ROUTE and method == "POST":
                if status in (400, 401):
                    metrics.login_failures.inc()
                elif status == 429:
                    metrics.throttled_logins.inc()

    async def exposition(self, request: web.Request) -> web.Response:
        """The metrics in Prometheus's text format (of every worker in multiprocess mode)."""
        registry: prometheus_client.CollectorRegistry = prometheus_client.REGISTRY
        if os.environ.get(MULTIPROC_DIR_ENV):
            registry = prometheus_client.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = prometheus_client.generate_latest(registry)
        response = web.Response(body=body)
        response.content_type = "text/plain"
        response.headers["Content-Type"] = prometheus_client.CONTENT_TYPE_LATEST
        return response

    async def _listener(self, app: web.Application) -> AsyncIterator[None]:
        """The separate listener of ``port``: serves only the exposition."""
        listener = web.Application()
        listener.router.add_get(self.config.path, self.exposition)
        runner = web.AppRunner(listener, access_log=None)
        await runner.setup()
        config = app.get(CONFIG)
        host = self.config.host or (config.server.host if config is not None else "127.0.0.1")
        # Workers share the port as they share the main one (each binds it).
        site = web.TCPSite(
            runner, host, self.config.port, reuse_port=bool(os.environ.get(MULTIPROC_DIR_ENV))
        )
        try:
            await site.start()
            _LOGGER.info("metrics on http://%s:%d%s", host, self.config.port, self.config.path)
            yield
        finally:
            await runner.cleanup()


def mark_worker_dead(directory: str, pid: int) -> None:
    """Forget the live gauges of worker ``pid``, which exited, in the multiprocess
    ``directory`` (its counters and histograms keep counting in the totals)."""
    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
