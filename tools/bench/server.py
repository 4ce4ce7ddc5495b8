"""GET /api/case/{guid} under load: fusion-server against a bare aiohttp handler.

Usage::

    hatch run bench:server [--duration 5] [--connections 32] [--rounds 3]
                           [--stores memory,redis] [--baseline REF]
    hatch run bench:server --workers 2 [--duration 5] [--connections 32] [--rounds 3]

What runs, in one run on this machine:

- a bare aiohttp app (its own process) whose handler answers every path and
  method with the very bytes fusion-server answers for the hot case;
- ``fusion-server serve`` processes on one SQLite data directory (and, for
  the ``redis`` store, one real redis-server started here):

  - ``logs``: what a deployment runs and the figure that counts: log level
    INFO, the access log on, records written to a file (``FUSION_LOG_FILE``),
    so every request writes its access line and its audit line;
  - ``quiet``: the access log off and level WARNING (no line per request);
  - with ``--baseline REF`` (a commit, e.g. ``main``), the same two for that
    commit's tree (checked out in a temporary worktree and put first on
    ``PYTHONPATH``), so a change is compared with what it replaces in the
    same run;

- wrk (``-t1 -c32``; an aiohttp load generator when wrk is missing) on each
  workload below, every row once per round, rounds interleaved, the bare
  handler first in each round and once more at the end; ratios use the mean
  of the bare runs, whose spread is printed so the noise is visible.

Workloads (API key ``X-Fusion-API-Token`` or the session cookie of a login):

- ``hot``: one case, one key, one session: every cache hits (the SQLite read
  cache, the decoded session). The protocol's hottest request at its best.
- ``miss``: 20,000 cases, read round-robin: more than the SQLite read cache
  holds (16,384 cases), so most reads go to SQLite; the session run rotates
  over 5,000 sessions, more than the decoded-session cache holds (4,096).
- ``mixed``: the hot case, one ``PUT`` (a description change) every ten
  requests: each write drops the SQLite read cache of every process.

What is cached across requests, on the server: the SQLite storage keeps
stored case bytes by GUID (16,384 at most), dropped whenever any connection
commits (``PRAGMA data_version``); sessions keep their decoded identity by
session id while the stored bytes are the same (the store is read on every
request). Nothing else.

With ``--workers N`` (N >= 2) it measures instead, on one real redis-server
(several workers need a shared store), the ``hot`` API-key workload against:

- ``w1`` and ``wN``: ``fusion-server serve`` with one process, and with
  ``--workers N`` (the ``logs`` variant): the ratio says how throughput grows
  with the workers (on a 2-core machine the load generator and redis-server
  share the cores with the workers, so 2x is out of reach);
- ``w1+metrics`` and ``wN+metrics``: the same with a ``metrics`` section
  (prometheus-client; multiprocess mode under the master), and
  ``quiet-w1`` against ``quiet-w1+metrics`` (no log line per request, so the
  metrics' share of the hot path is the largest): what collecting metrics
  costs (target: under 5 %).

Targets (``memory://``, the ``logs`` servers): API-key ``hot`` >= 55 % of
bare, session ``hot`` >= 50 %; with ``--baseline``, the ``quiet`` rows not
slower than the baseline's (>= 97 %, the noise of one run). The other rows
are reported, not judged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "testing"))

from fusion_testing.services import free_port, port_accepts, wait_until_ready  # noqa: E402

API_KEY = "bench-robot-key-0123456789abcdef"
USERNAME = "analyst"
PASSWORD = "bench-password"  # noqa: S105 - the bench user's, in a throwaway config
MISS_CASES = 20_000
MISS_SESSIONS = 5_000
WRITE_EVERY = 10
HOT_TARGETS = {"key": 0.55, "session": 0.50}
BASELINE_TARGET = 0.97


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    wait_until_ready(process, lambda: port_accepts(port), name=f"port {port}", timeout=timeout)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------
# the bare handler (a process of its own)
# ---------------------------------------------------------------------------


def serve_bare(port: int, body_file: str) -> None:
    """Every method and path: the stored envelope bytes, nothing else."""
    from aiohttp import web

    body = Path(body_file).read_bytes()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------------------
# load generation
# ---------------------------------------------------------------------------

# One request per call, paths (and cookies) taken round-robin from a file of
# "path<TAB>cookie" lines; every WRITE_EVERY-th request a PUT when asked.
_WRK_SCRIPT = """
local lines = {}
for line in io.lines(os.getenv("BENCH_REQUESTS")) do
  local path, cookie = line:match("([^\\t]*)\\t?(.*)")
  lines[#lines + 1] = {path, cookie}
end
local write_every = tonumber(os.getenv("BENCH_WRITE_EVERY") or "0")
local body = '{"description": "bench"}'
local n = 0
request = function()
  n = n + 1
  local entry = lines[(n % #lines) + 1]
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  if entry[2] ~= "" then headers["Cookie"] = entry[2] end
  if write_every > 0 and n % write_every == 0 then
    headers["Content-Type"] = "application/json"
    return wrk.format("PUT", entry[1], headers, body)
  end
  return wrk.format("GET", entry[1], headers)
end
"""


def load_with_aiohttp(
    base: str, headers: dict[str, str], requests_file: str, write_every: int, connections: int,
    duration: float,
) -> None:  # fmt: skip
    """Fallback when wrk is missing: prints wrk's lines that the parser reads."""
    import aiohttp

    entries = [line.split("\t") for line in Path(requests_file).read_text().splitlines()]

    async def run() -> tuple[int, int]:
        done = errors = 0
        deadline = time.monotonic() + duration
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                nonlocal done, errors
                while time.monotonic() < deadline:
                    path, cookie = (entries[done % len(entries)] + [""])[:2]
                    sent = dict(headers, Cookie=cookie) if cookie else headers
                    write = write_every and (done + 1) % write_every == 0
                    method = "PUT" if write else "GET"
                    body = {"description": "bench"} if write else None
                    async with session.request(method, base + path, headers=sent, json=body) as r:
                        await r.read()
                        errors += r.status != 200
                    done += 1

            await asyncio.gather(*(worker() for _ in range(connections)))
        return done, errors

    started = time.monotonic()
    done, errors = asyncio.run(run())
    print(f"Requests/sec: {done / (time.monotonic() - started):.2f}")
    if errors:
        print(f"  Non-2xx or 3xx responses: {errors}")


@dataclass
class Load:
    connections: int
    duration: float
    script: Path
    wrk: str | None = field(default_factory=lambda: shutil.which("wrk"))

    def run(
        self, base: str, headers: dict[str, str], requests_file: Path, write_every: int = 0
    ) -> float:
        env = {
            **os.environ,
            "BENCH_REQUESTS": str(requests_file),
            "BENCH_WRITE_EVERY": str(write_every),
        }
        if self.wrk is not None:
            command = [self.wrk, "-t1", f"-c{self.connections}", f"-d{self.duration:g}s"]
            command += ["-s", str(self.script)]
            for name, value in headers.items():
                command += ["-H", f"{name}: {value}"]
            command.append(base)
        else:
            command = [
                sys.executable, __file__, "load", base, json.dumps(headers), str(requests_file),
                str(write_every), str(self.connections), str(self.duration),
            ]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        text = output.stdout
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if errors:
            raise RuntimeError(f"{errors.group(1)} error answers from {base}:\n{text}")
        if re.search(r"Socket errors: .*(read|write|timeout) [1-9]", text):
            raise RuntimeError(f"socket errors against {base}:\n{text}")
        found = re.search(r"Requests/sec:\s+([0-9.]+)", text)
        if found is None:
            raise RuntimeError(f"no Requests/sec in the load generator's output:\n{text}")
        return float(found.group(1))


# ---------------------------------------------------------------------------
# fusion-server processes
# ---------------------------------------------------------------------------


def _request(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return response.read(), dict(response.headers)


def _config(
    data_dir: Path, store_url: str, port: int, access_log: bool, metrics: bool = False
) -> dict[str, object]:
    from argon2 import PasswordHasher

    # Cheap parameters: the bench logs in thousands of sessions; it measures reads.
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    return {
        "server": {"host": "127.0.0.1", "port": port, "access_log": access_log},
        "shared_store": {"url": store_url},
        "storage": {"data_dir": str(data_dir)},
        "auth": {
            "backend": {
                "type": "basic",
                "users": [
                    {
                        "username": USERNAME,
                        "password_hash": cheap.hash(PASSWORD),
                        "groups": ["analysts"],
                    }
                ],
            },
            "api_keys": [{"username": "robot", "groups": ["robots"], "key": API_KEY}],
            # Logins in flight count against the throttle: the bench makes 8 at once.
            "throttle": {"max_failures_per_username": 100, "max_failures_per_ip": 100},
        },
        "info": {"api": "bench", "version": "1"},
        "case": {},
        **({"metrics": {"path": "/metrics"}} if metrics else {}),
    }


class ServerProcess:
    """``python -m fusion.server serve`` of one tree, in one variant (logs or quiet)."""

    def __init__(
        self, name: str, workdir: Path, data_dir: Path, store_url: str, *, logs: bool,
        pythonpath: str | None, workers: int = 1, metrics: bool = False,
    ) -> None:  # fmt: skip
        self.name = name
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "server.json"
        path.write_text(json.dumps(_config(data_dir, store_url, self.port, logs, metrics)))
        env = {**os.environ, "FUSION_LOG_LEVEL": "INFO" if logs else "WARNING"}
        self.log_file = workdir / "server.log"
        if logs:
            env["FUSION_LOG_FILE"] = str(self.log_file)
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        self.output = (workdir / "output.log").open("wb")
        command = [sys.executable, "-m", "fusion.server", "serve", "--config", str(path)]
        if workers > 1:
            command += ["--workers", str(workers)]
        self.process = subprocess.Popen(
            command, stdout=self.output, stderr=subprocess.STDOUT, env=env
        )
        _wait_port(self.port, self.process)
        if workers > 1:
            # Every worker serving, not only the first (each logs its start line).
            wait_until_ready(
                self.process,
                lambda: self._started_workers() >= workers,
                name=f"{workers} workers on port {self.port}",
                timeout=60,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def _started_workers(self) -> int:
        text = self.log_file.read_text() if self.log_file.exists() else ""
        return len(re.findall(r"; worker pid \d+ of \d+\)", text))

    def create_cases(self, count: int) -> list[str]:
        body = json.dumps({"name": "bench", "acs": ["robots", "analysts"]}).encode()
        headers = {"X-Fusion-API-Token": API_KEY, "Content-Type": "application/json"}

        def create(_: int) -> str:
            raw, _headers = _request(self.url + "/api/case", data=body, headers=headers)
            guid: str = json.loads(raw)["data"]["guid"]
            return guid

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(create, range(count)))

    def logins(self, count: int) -> list[str]:
        body = json.dumps({"data": {"username": USERNAME, "password": PASSWORD}}).encode()

        def login(_: int) -> str:
            _body, headers = _request(
                self.url + "/api/auth/login",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            return headers["Set-Cookie"].split(";", 1)[0]

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(login, range(count)))

    def stop(self) -> None:
        _stop(self.process)
        self.output.close()


@contextmanager
def baseline_tree(ref: str, workdir: Path) -> Iterator[str]:
    """A worktree of ``ref``; yields the PYTHONPATH that puts its packages first."""
    tree = workdir / "baseline-tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref],
        check=True,
        capture_output=True,
    )
    try:
        sources = sorted(str(path) for path in (tree / "packages").glob("*/src"))
        yield os.pathsep.join(sources)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
            check=False,
            capture_output=True,
        )


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


@dataclass
class Row:
    """One measured line: a server (or the bare handler), a path and a workload."""

    server: str
    path: str
    workload: str
    base: str
    headers: dict[str, str]
    requests: Path
    write_every: int = 0
    rates: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.server}/{self.path}/{self.workload}"


def _requests_file(path: Path, paths: list[str], cookies: list[str] | None = None) -> Path:
    lines = []
    for index, request_path in enumerate(paths):
        cookie = cookies[index % len(cookies)] if cookies else ""
        lines.append(f"{request_path}\t{cookie}")
    if cookies and len(cookies) > len(paths):
        lines = [f"{paths[i % len(paths)]}\t{cookie}" for i, cookie in enumerate(cookies)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _measure_store(
    store: str, store_url: str, load: Load, rounds: int, workdir: Path, baseline: str | None
) -> list[Row]:
    workdir.mkdir(parents=True, exist_ok=True)
    key = {"X-Fusion-API-Token": API_KEY}
    servers: list[ServerProcess] = []
    bare: subprocess.Popen[bytes] | None = None
    try:
        trees: list[tuple[str, str | None]] = [("", None)]
        if baseline is not None:
            trees.append(("base-", baseline))
        for prefix, pythonpath in trees:
            data_dir = workdir / f"{prefix}data"
            for variant in ("logs", "quiet"):
                name = f"{prefix}{variant}"
                servers.append(
                    ServerProcess(
                        name, workdir / name, data_dir, store_url,
                        logs=variant == "logs", pythonpath=pythonpath,
                    )
                )  # fmt: skip
        rows: list[Row] = []
        hot_body: bytes | None = None
        for server in servers:
            guid = server.create_cases(1)[0]
            hot = _requests_file(workdir / f"{server.name}-hot.txt", [f"/api/case/{guid}"])
            cookie = server.logins(1)
            hot_session = _requests_file(
                workdir / f"{server.name}-hot-session.txt", [f"/api/case/{guid}"], cookie
            )
            body, _ = _request(f"{server.url}/api/case/{guid}", headers=key)
            if hot_body is None:
                hot_body = body
            rows.append(Row(server.name, "key", "hot", server.url, key, hot))
            rows.append(Row(server.name, "session", "hot", server.url, {}, hot_session))
            if server.name == "logs":
                print(
                    f"  {store}: creating {MISS_CASES} cases, {MISS_SESSIONS} sessions", flush=True
                )
                guids = server.create_cases(MISS_CASES)
                paths = [f"/api/case/{value}" for value in guids]
                cookies = server.logins(MISS_SESSIONS)
                miss = _requests_file(workdir / "miss.txt", paths)
                miss_session = _requests_file(workdir / "miss-session.txt", paths, cookies)
                rows.append(Row(server.name, "key", "miss", server.url, key, miss))
                rows.append(Row(server.name, "session", "miss", server.url, {}, miss_session))
                rows.append(Row(server.name, "key", "mixed", server.url, key, hot, WRITE_EVERY))
        assert hot_body is not None
        body_file = workdir / "body.json"
        body_file.write_bytes(hot_body)
        bare_port = free_port()
        bare = subprocess.Popen(
            [sys.executable, __file__, "bare", str(bare_port), str(body_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(bare_port, bare)
        bare_url = f"http://127.0.0.1:{bare_port}"
        bare_row = Row("bare", "-", "hot", bare_url, {}, workdir / "logs-hot.txt")
        bare_mixed = Row("bare", "-", "mixed", bare_url, {}, workdir / "logs-hot.txt", WRITE_EVERY)
        every = [bare_row, bare_mixed, *rows]
        # Warm-up: connections, caches, the interpreter's first calls.
        warm = Load(load.connections, 1.0, load.script, load.wrk)
        for row in every:
            warm.run(row.base, row.headers, row.requests, row.write_every)
        for _ in range(rounds):
            for row in every:
                row.rates.append(load.run(row.base, row.headers, row.requests, row.write_every))
                print(f"  {store:6} {row.label:28} {row.rates[-1]:10.0f} req/s", flush=True)
        bare_row.rates.append(load.run(bare_row.base, {}, bare_row.requests))
        return every
    finally:
        if bare is not None:
            _stop(bare)
        for server in servers:
            server.stop()


def _report(store: str, rows: list[Row], baseline: bool) -> list[str]:
    """Print one store's table; return the targets missed."""
    missed: list[str] = []
    bare_rates = next(row for row in rows if row.label == "bare/-/hot").rates
    bare = statistics.mean(bare_rates)
    spread = (max(bare_rates) - min(bare_rates)) / bare
    print(f"\n{store}: bare {bare:.0f} req/s ({1e6 / bare:.1f} us/req, spread {spread:.0%})")
    print(f"{'row':28} {'req/s':>8} {'us/req':>7} {'+us':>6} {'of bare':>8} {'of base':>8}  runs")
    means = {row.label: statistics.mean(row.rates) for row in rows}
    for row in rows:
        if row.label == "bare/-/hot":
            continue
        value = means[row.label]
        reference = means["bare/-/mixed"] if row.workload == "mixed" else bare
        ratio = value / reference
        versus = ""
        verdict = ""
        if baseline and not row.server.startswith("base-") and row.workload == "hot":
            base_value = means.get(f"base-{row.label}")
            if base_value is not None:
                versus = f"{value / base_value:8.0%}"
                if row.server == "quiet" and value / base_value < BASELINE_TARGET:
                    verdict = f" MISSED (>= {BASELINE_TARGET:.0%} of base)"
                    missed.append(f"{store}/{row.label} vs base")
        if store == "memory" and row.server == "logs" and row.workload == "hot":
            target = HOT_TARGETS[row.path]
            ok = ratio >= target
            verdict += f" {'ok' if ok else 'MISSED'} (>= {target:.0%} of bare)"
            if not ok:
                missed.append(f"{store}/{row.label}")
        runs = ", ".join(f"{rate:.0f}" for rate in row.rates)
        print(
            f"{row.label:28} {value:8.0f} {1e6 / value:7.1f} {1e6 / value - 1e6 / reference:+6.1f} "
            f"{ratio:8.0%} {versus:>8}  {runs}{verdict}"
        )
    return missed


def _measure_workers(workers: int, load: Load, rounds: int, workdir: Path) -> list[Row]:
    """One process against ``workers``, with and without metrics, on one redis-server."""
    from fusion_testing.redis import RedisServer

    key = {"X-Fusion-API-Token": API_KEY}
    variants = [
        ("w1", True, 1, False),
        (f"w{workers}", True, workers, False),
        ("w1+metrics", True, 1, True),
        (f"w{workers}+metrics", True, workers, True),
        ("quiet-w1", False, 1, False),
        ("quiet-w1+metrics", False, 1, True),
    ]
    servers: list[ServerProcess] = []
    with RedisServer() as redis:
        try:
            rows: list[Row] = []
            for name, logs, count, metrics in variants:
                server = ServerProcess(
                    name, workdir / name, workdir / f"{name}-data", redis.url, logs=logs,
                    pythonpath=None, workers=count, metrics=metrics,
                )  # fmt: skip
                servers.append(server)
                guid = server.create_cases(1)[0]
                hot = _requests_file(workdir / f"{name}-hot.txt", [f"/api/case/{guid}"])
                rows.append(Row(name, "key", "hot", server.url, key, hot))
            warm = Load(load.connections, 1.0, load.script, load.wrk)
            for row in rows:
                warm.run(row.base, row.headers, row.requests)
            for _ in range(rounds):
                for row in rows:
                    row.rates.append(load.run(row.base, row.headers, row.requests))
                    print(f"  {row.label:28} {row.rates[-1]:10.0f} req/s", flush=True)
            return rows
        finally:
            for server in servers:
                server.stop()


METRICS_COST_TARGET = 0.05


def middleware_cost() -> None:
    """Print the CPU time the metrics middleware adds to one request, in us
    (best of several runs: what it costs, without the machine's noise)."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from fusion.server.metrics.api import FusionMetricsAPI
    from fusion.server.metrics.config import FusionMetricsConfig

    api = FusionMetricsAPI(FusionMetricsConfig())
    app = web.Application()
    answer = web.Response(body=b"{}")

    async def handler(request: web.Request) -> web.Response:
        return answer

    app.router.add_get("/api/case/{case_guid}", handler)

    async def run() -> float:
        request = make_mocked_request("GET", "/api/case/0", app=app)
        request._match_info = await app.router.resolve(request)
        count = 20_000
        best = float("inf")
        for _ in range(7):
            started = time.perf_counter()
            for _ in range(count):
                await handler(request)
            bare = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(count):
                await api.middleware(request, handler)
            best = min(best, (time.perf_counter() - started - bare) / count)
        return best * 1e6

    print(f"{asyncio.run(run()):.2f}")


def _middleware_us(multiprocess_dir: str | None) -> float:
    env = dict(os.environ)
    if multiprocess_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
    output = subprocess.run(
        [sys.executable, __file__, "middleware-cost"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return float(output.stdout.strip())


def _report_workers(workers: int, rows: list[Row]) -> list[str]:
    """Print the workers' table and ratios; return the targets missed."""
    means = {row.server: statistics.mean(row.rates) for row in rows}
    print(f"\nworkers (redis, hot, API key; {os.cpu_count()} CPUs, a shared noisy machine):")
    print(f"{'server':22} {'req/s':>8} {'us/req':>7}  runs")
    for row in rows:
        value = means[row.server]
        runs = ", ".join(f"{rate:.0f}" for rate in row.rates)
        print(f"{row.server:22} {value:8.0f} {1e6 / value:7.1f}  {runs}")
    many = f"w{workers}"
    print(f"\n{many} / w1: {means[many] / means['w1']:.2f}x")
    for plain in ("w1", many, "quiet-w1"):
        cost = 1 - means[f"{plain}+metrics"] / means[plain]
        print(f"metrics cost on {plain}, end to end: {cost:+.1%} of throughput (noisy)")
    # End to end, a few per cent drown in the machine's noise: the middleware's
    # own CPU time, against the time of a request of the quiet server, is the
    # figure judged.
    missed: list[str] = []
    request_us = 1e6 / means["quiet-w1"]
    with tempfile.TemporaryDirectory(prefix="fusion-bench-metrics-") as directory:
        for mode, cost_us in (
            ("one process", _middleware_us(None)),
            ("multiprocess mode", _middleware_us(directory)),
        ):
            share = cost_us / request_us
            ok = share < METRICS_COST_TARGET
            print(
                f"metrics middleware, {mode}: {cost_us:.1f} us per request, {share:.1%} of"
                f" quiet-w1's {request_us:.0f} us ({'ok' if ok else 'MISSED'}:"
                f" < {METRICS_COST_TARGET:.0%})"
            )
            if not ok:
                missed.append(f"metrics middleware ({mode})")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per store")
    parser.add_argument("--stores", default="memory,redis")
    parser.add_argument(
        "--baseline", metavar="REF", help="also run the servers of this commit (e.g. main)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="instead: one process against --workers N, and the cost of metrics (on redis)",
    )
    args = parser.parse_args()
    if args.workers is not None:
        if args.workers < 2:
            parser.error("--workers: at least 2")
        with tempfile.TemporaryDirectory(prefix="fusion-bench-") as tmp:
            script = Path(tmp) / "requests.lua"
            script.write_text(_WRK_SCRIPT)
            load = Load(args.connections, args.duration, script)
            print(
                f"load: {'wrk' if load.wrk else 'aiohttp (wrk not found)'}, {args.connections}"
                f" connections, {args.duration:g} s per run, {args.rounds} rounds",
                flush=True,
            )
            missed_workers = _report_workers(
                args.workers, _measure_workers(args.workers, load, args.rounds, Path(tmp))
            )
        print(
            f"\ntargets missed: {', '.join(missed_workers)}"
            if missed_workers
            else "\nevery target met"
        )
        return 1 if missed_workers else 0

    with tempfile.TemporaryDirectory(prefix="fusion-bench-") as tmp:
        workdir = Path(tmp)
        script = workdir / "requests.lua"
        script.write_text(_WRK_SCRIPT)
        load = Load(args.connections, args.duration, script)
        print(
            f"load: {'wrk' if load.wrk else 'aiohttp (wrk not found)'}, {args.connections} "
            f"connections, {args.duration:g} s per run, {args.rounds} rounds, "
            f"{os.cpu_count()} CPUs; baseline: {args.baseline or 'none'}",
            flush=True,
        )
        missed: list[str] = []
        with contextmanager_or_none(args.baseline, workdir) as pythonpath:
            results: dict[str, list[Row]] = {}
            for store in args.stores.split(","):
                if store == "memory":
                    results[store] = _measure_store(
                        store, "memory://", load, args.rounds, workdir / store, pythonpath
                    )
                elif store == "redis":
                    from fusion_testing.redis import RedisServer

                    with RedisServer() as redis:
                        results[store] = _measure_store(
                            store, redis.url, load, args.rounds, workdir / store, pythonpath
                        )
                else:
                    parser.error(f"unknown store {store!r}: memory or redis")
        for store, rows in results.items():
            missed += _report(store, rows, args.baseline is not None)
    if missed:
        print(f"\ntargets missed: {', '.join(missed)}")
        return 1
    print("\nevery target met")
    return 0


@contextmanager
def contextmanager_or_none(ref: str | None, workdir: Path) -> Iterator[str | None]:
    if ref is None:
        yield None
        return
    with baseline_tree(ref, workdir) as pythonpath:
        yield pythonpath


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "bare":
        serve_bare(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "middleware-cost":
        middleware_cost()
    elif len(sys.argv) > 1 and sys.argv[1] == "load":
        load_with_aiohttp(
            sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
            int(sys.argv[6]), float(sys.argv[7]),
        )  # fmt: skip
    else:
        sys.exit(main())
