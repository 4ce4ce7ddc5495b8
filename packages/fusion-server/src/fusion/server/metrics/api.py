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

try:
    import prometheus_client
    from prometheus_client import multiprocess
except ImportError as _missing:  # pragma: no cover - exercised by the extra's absence
    raise ImportError(
        "the metrics section needs prometheus-client: pip install 'fusion-server[metrics]'"
    ) from _missing
from aiohttp import web

from fusion.server.appkeys import CONFIG
from fusion.server.metrics.config import FusionMetricsConfig

__all__ = ["MULTIPROC_DIR_ENV", "FusionMetricsAPI", "mark_worker_dead"]

_LOGGER = logging.getLogger("fusion.server.metrics")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The directory of prometheus-client's multiprocess mode (set by the master for its workers)."""

_UNMATCHED = "unmatched"
_LOGIN_ROUTE = "/api/auth/login"
_EVENTS_ROUTE = "/api/events/case/{case_guid}"


@dataclass(frozen=True)
class _Metrics:
    """The process's metrics, created once (prometheus-client registers them globally)."""

    requests: prometheus_client.Counter
    duration: prometheus_client.Histogram
    in_progress: prometheus_client.Gauge
    request_bytes: prometheus_client.Counter
    response_bytes: prometheus_client.Counter
    login_failures: prometheus_client.Counter
    throttled_logins: prometheus_client.Counter
    unavailable: prometheus_client.Counter
    event_streams: prometheus_client.Gauge


@cache
def _metrics() -> _Metrics:
    route = ("route",)
    return _Metrics(
        requests=prometheus_client.Counter(
            "fusion_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
        ),
        duration=prometheus_client.Histogram(
            "fusion_http_request_duration_seconds",
            "Time to answer a request (a stream: until it ends), by route template and method.",
            ("route", "method"),
        ),
        in_progress=prometheus_client.Gauge(
            "fusion_http_requests_in_progress",
            "Requests being answered, by route template and method.",
            ("route", "method"),
            multiprocess_mode="livesum",
        ),
        request_bytes=prometheus_client.Counter(
            "fusion_http_request_body_bytes",
            "Request body bytes received (uploads), by route template.",
            route,
        ),
        response_bytes=prometheus_client.Counter(
            "fusion_http_response_body_bytes",
            "Response body bytes sent (downloads), by route template.",
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
    )


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED


def _response_bytes(response: web.StreamResponse) -> int:
    if response.prepared:  # a stream or download: what was written
        return response.body_length
    return response.content_length or 0


class FusionMetricsAPI:
    """Collects the request metrics of an application and serves their exposition.

    ``FusionServer.build`` sets it up when the configuration has a ``metrics``
    section; an application made otherwise calls ``FusionMetricsAPI(config).setup(app)``.
    """

    def __init__(self, config: FusionMetricsConfig) -> None:
        self.config = config
        self.metrics = _metrics()

    def setup(self, app: web.Application) -> None:
        """Add the middleware (outermost: it sees the final status) and the exposition."""
        app.middlewares.insert(0, self.middleware)
        if self.config.port is None:
            app.router.add_get(self.config.path, self.exposition)
        else:
            app.cleanup_ctx.append(self._listener)

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
        method = request.method
        stream = route == _EVENTS_ROUTE
        in_progress = metrics.in_progress.labels(route, method)
        in_progress.inc()
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
            metrics.duration.labels(route, method).observe(time.perf_counter() - started)
            in_progress.dec()
            if stream:
                metrics.event_streams.dec()
            metrics.requests.labels(route, method, str(status)).inc()
            received = request.content.total_bytes
            if received:
                metrics.request_bytes.labels(route).inc(received)
            sent = _response_bytes(response) if response is not None else 0
            if sent:
                metrics.response_bytes.labels(route).inc(sent)
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
