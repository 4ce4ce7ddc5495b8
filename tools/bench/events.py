"""Live events under load: one server process, N SSE subscribers on one case.

Usage::

    python tools/bench/events.py [--sizes 10,100,1000] [--events 50] [--interval 0.02]
                                 [--stores memory,redis] [--users 10] [--workers 2]

For each store and each N, the script starts one server process (the event
API on an aiohttp app), N subscribers spread over ``--workers`` client
processes and ``--users`` usernames, then has the server emit ``--events``
events ``--interval`` seconds apart. Each event carries the server's clock at
``notify()``; subscribers record when they parsed it. Printed per run:

- p50 / p99 / max delivery latency (notify to parsed by the subscriber);
- events lost (expected N x events, minus received);
- Redis client connections (``CLIENT LIST``, the benchmark's own excluded)
  while the N subscribers are connected: the target is a count independent of N;
- server memory per subscriber: RSS with N subscribers minus RSS before, / N.

Targets at N = 1000: nothing lost, p99 under 100 ms, Redis connections flat.
The subscribers are bare asyncio protocols (no HTTP client library) so that
their CPU time, on the same machine, distorts the figures as little as
possible; whatever else runs on the machine shows up in the latencies.
FUSION_BENCH_PROFILE=<file> writes a cProfile of the server process.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "testing"))

CASE_GUID = UUID("5f0e1d2c-3b4a-4958-8776-a5b4c3d2e1f0")
BENCH_CATEGORY = "bench"
_BENCH_EVENT = re.compile(rb'"category":"bench".*"sent":([0-9.e+-]+)')


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------
# the server process
# ---------------------------------------------------------------------------


def serve(port: int, store_url: str) -> None:
    from aiohttp import web

    from fusion.concept import Case, Identity
    from fusion.helper.http_envelope import envelope_middleware
    from fusion.helper.store import create_store
    from fusion.server.appkeys import STORE
    from fusion.server.event import FusionEventAPI, FusionEventConfig

    _raise_fd_limit()
    case = Case(guid=CASE_GUID, name="bench")

    async def authorize(request: web.Request, case_guid: UUID) -> tuple[Identity, Case]:
        return Identity(username=request.headers.get("X-User", "bench")), case

    async def notify(request: web.Request) -> web.Response:
        body = await request.json()
        await events.notify(BENCH_CATEGORY, case, {"seq": body["seq"], "sent": time.time()})
        return web.json_response({"status": 200})

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"status": 200, "data": {"streams": events.open_streams}})

    async def on_cleanup(app: web.Application) -> None:
        await app[STORE].close()

    app = web.Application(middlewares=[envelope_middleware()])
    app[STORE] = create_store(store_url)
    events = FusionEventAPI(FusionEventConfig(source="bench", keepalive=30.0), authorize=authorize)
    events.setup(app)
    app.router.add_post("/bench/notify", notify)
    app.router.add_get("/bench/ping", ping)
    app.on_cleanup.append(on_cleanup)
    profile = os.environ.get("FUSION_BENCH_PROFILE")
    if not profile:
        web.run_app(app, host="127.0.0.1", port=port, print=None, backlog=4096, access_log=None)
        return
    # FUSION_BENCH_PROFILE=<file>: where the server spends its time (pstats format).
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        web.run_app(app, host="127.0.0.1", port=port, print=None, backlog=4096, access_log=None)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


# ---------------------------------------------------------------------------
# a client worker process
# ---------------------------------------------------------------------------


class _Subscriber(asyncio.Protocol):
    """One SSE subscriber as a bare protocol: no task, no HTTP client machinery.

    The clients share the machine with the server; a full HTTP client and SSE
    parser per connection would spend enough CPU to show up as delivery
    latency. This one sends the request, then splits what arrives into frames
    and reads the two numbers it needs with a regex (chunk-size lines between
    frames do not matter to that).
    """

    def __init__(self, request: bytes, stats: _Stats) -> None:
        self.request = request
        self.stats = stats
        self.buffer = b""
        self.seen = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status_checked = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        if not self.status_checked:
            if b"\r\n" not in self.buffer:
                return
            self.status_checked = True
            if not self.buffer.startswith(b"HTTP/1.1 200"):
                self._finish(RuntimeError(self.buffer.split(b"\r\n", 1)[0].decode()))
                return
        *frames, self.buffer = self.buffer.split(b"\n\n")
        stats = self.stats
        for frame in frames:
            if b'"category":"subscribers"' in frame:
                stats.subscribed()
                continue
            match = _BENCH_EVENT.search(frame)
            if match is not None:
                stats.latencies.append(now - float(match.group(1)))
                self.seen += 1
        if self.seen >= stats.expected:
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or (None if self.seen >= self.stats.expected else EOFError("closed")))

    def _finish(self, exc: BaseException | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)


def _same(subscriber: _Subscriber) -> _Subscriber:
    return subscriber


class _Stats:
    def __init__(self, count: int, expected: int) -> None:
        self.count = count
        self.expected = expected
        self.latencies: list[float] = []
        self.ready = 0
        self.all_ready = asyncio.Event()

    def subscribed(self) -> None:
        self.ready += 1
        if self.ready == self.count:
            self.all_ready.set()


async def _subscribe_many(
    port: int, count: int, usernames: list[str], expected: int, seconds: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats = _Stats(count, expected)
    subscribers: list[_Subscriber] = []
    for index in range(count):
        request = (
            f"GET /api/events/case/{CASE_GUID} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"X-User: {usernames[index % len(usernames)]}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        subscriber = _Subscriber(request, stats)
        await loop.create_connection(functools.partial(_same, subscriber), "127.0.0.1", port)
        subscribers.append(subscriber)
    await stats.all_ready.wait()
    print("ready", flush=True)
    # Measured from the orchestrator's "go", sent once every worker is ready.
    go = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), go.set)
    await go.wait()
    loop.remove_reader(sys.stdin.fileno())
    done, _pending = await asyncio.wait(
        [subscriber.done for subscriber in subscribers], timeout=seconds
    )
    errors = [repr(future.exception()) for future in done if future.exception() is not None]
    for subscriber in subscribers:
        if subscriber.transport is not None:
            subscriber.transport.close()
    received = sum(subscriber.seen for subscriber in subscribers)
    return {"latencies": stats.latencies, "received": received, "errors": errors[:3]}


def worker(port: int, count: int, usernames: list[str], expected: int, seconds: float) -> None:
    _raise_fd_limit()
    result = asyncio.run(_subscribe_many(port, count, usernames, expected, seconds))
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# the orchestrator
# ---------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _wait_ready(port: int, timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/ping", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def _redis_clients(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        # Our own connection is in the list too.
        clients: list[dict[str, Any]] = client.client_list()  # type: ignore[assignment]
        return len(clients) - 1
    finally:
        client.close()


async def _send_events(port: int, events: int, interval: float) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        next_at = time.monotonic()
        for seq in range(events):
            async with session.post(
                f"http://127.0.0.1:{port}/bench/notify", json={"seq": seq}
            ) as response:
                response.raise_for_status()
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def run_one(
    store: str, redis_url: str | None, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    from fusion_testing.services import free_port

    port = free_port()
    store_url = redis_url if store == "redis" else "memory://"
    assert store_url is not None
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", "--port", str(port), "--store", store_url],
        cwd=ROOT,
    )
    workers: list[subprocess.Popen[str]] = []
    try:
        _wait_ready(port)
        time.sleep(0.2)
        rss_before = _rss_kib(server.pid)
        workers_count = max(1, min(args.workers, size // 10 or 1))
        shares = [
            size // workers_count + (1 if i < size % workers_count else 0)
            for i in range(workers_count)
        ]
        usernames = [f"user{i}" for i in range(args.users)]
        seconds = args.events * args.interval + 15
        for share in shares:
            workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "worker",
                        "--port",
                        str(port),
                        "--count",
                        str(share),
                        "--users",
                        ",".join(usernames),
                        "--events",
                        str(args.events),
                        "--seconds",
                        str(seconds),
                    ],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for process in workers:
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"worker failed to subscribe: {line!r}")
        time.sleep(0.3)  # let presence events settle before measuring
        rss_after = _rss_kib(server.pid)
        redis_connections = _redis_clients(store_url) if store == "redis" else 0
        for process in workers:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        asyncio.run(_send_events(port, args.events, args.interval))
        latencies: list[float] = []
        received = 0
        errors: list[str] = []
        for process in workers:
            out, _ = process.communicate(timeout=seconds + 10)
            result = json.loads(out.strip().splitlines()[-1])
            latencies.extend(result["latencies"])
            received += result["received"]
            errors.extend(result["errors"])
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    latencies.sort()
    expected = size * args.events

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "store": store,
        "n": size,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "lost": expected - received,
        "redis_clients": redis_connections,
        "rss_per_sub_kib": (rss_after - rss_before) / size,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--store", required=True)
    worker_parser = sub.add_parser("worker")
    worker_parser.add_argument("--port", type=int, required=True)
    worker_parser.add_argument("--count", type=int, required=True)
    worker_parser.add_argument("--users", required=True)
    worker_parser.add_argument("--events", type=int, required=True)
    worker_parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--stores", default="memory,redis")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    if args.command == "serve":
        serve(args.port, args.store)
        return
    if args.command == "worker":
        worker(args.port, args.count, args.users.split(","), args.events, args.seconds)
        return

    _raise_fd_limit()
    stores = [store for store in args.stores.split(",") if store]
    sizes = [int(size) for size in args.sizes.split(",") if size]
    redis_server = None
    redis_url = None
    if "redis" in stores:
        from fusion_testing.redis import RedisServer

        redis_server = RedisServer()
        redis_server.start()
        redis_url = redis_server.url
    print(
        f"events bench: {args.events} events {args.interval * 1000:.0f} ms apart, "
        f"{args.users} usernames, {args.workers} client processes, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'store':<7}{'N':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'lost':>7}"
        f"{'redis conns':>13}{'KiB/sub':>9}"
    )
    print(header)
    try:
        for store in stores:
            for size in sizes:
                if redis_server is not None:
                    redis_server.flushall()
                row = run_one(store, redis_url, size, args)
                conns = str(row["redis_clients"]) if store == "redis" else "-"
                print(
                    f"{row['store']:<7}{row['n']:>6}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
                    f"{row['max_ms']:>9.1f}{row['lost']:>7}{conns:>13}{row['rss_per_sub_kib']:>9.1f}",
                    flush=True,
                )
                for error in row["errors"]:
                    print(f"    error: {error}")
    finally:
        if redis_server is not None:
            redis_server.close()


if __name__ == "__main__":
    main()
