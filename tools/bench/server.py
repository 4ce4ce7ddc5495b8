"""GET /api/case/{guid} under load: fusion-server against a bare aiohttp handler.

Usage::

    hatch run bench:server [--duration 5] [--connections 32] [--rounds 2]
                           [--stores memory,redis] [--log-level INFO]

In one run, on this machine:

- a bare aiohttp app (its own process, one worker) whose handler returns the
  very bytes fusion-server answers for the case (the same JSON envelope);
- a real ``fusion-server serve`` process (config with an API key and a basic
  user, SQLite in a temporary data directory, one case stored), first on the
  ``memory://`` store, then on a real redis-server started here;
- wrk (``wrk -t1 -c32 -d5s``; an aiohttp load generator in its own process
  when wrk is missing) against the bare handler, the API-key path
  (``X-Fusion-API-Token``) and the session path (the ``FUSION_SESSION``
  cookie of a login), interleaved ``--rounds`` times, with one more bare run
  at the end: the ratios use the mean of the bare runs, whose spread is
  printed so the noise is visible.

The storage read is part of the measured path (each request reads the case
from SQLite; nothing is cached across requests).

Targets: API-key path >= 75 % of bare on both stores; session path >= 60 % on
memory:// and >= 40 % on Redis.

Where the time goes (py-spy on the server, API-key path, 2-core machine): the
bare handler spends ~29 us per request, two thirds of it in aiohttp's parsing
and in send(); fusion-server adds ~10 us inside the handler (authentication
and the access check ~3 us, the audit line ~2.5 us including its share of
the once-per-iteration write, the SQLite freshness check ~1 us, the envelope
middleware and response ~2 us) and, being slower, pays more per send() as
the load generator sleeps between answers (a bare handler given a 10 us busy
loop loses 13 us per request, not 10). ``--log-level WARNING`` (no audit of
granted reads) shows the audit's share.
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "testing"))

from fusion_testing.services import free_port, port_accepts, wait_until_ready  # noqa: E402

API_KEY = "bench-robot-key-0123456789abcdef"
USERNAME = "analyst"
PASSWORD = "bench-password"  # noqa: S105 - the bench user's, in a throwaway config
TARGETS = {
    ("memory", "key"): 0.75,
    ("memory", "session"): 0.60,
    ("redis", "key"): 0.75,
    ("redis", "session"): 0.40,
}


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    wait_until_ready(process, lambda: port_accepts(port), name=f"port {port}", timeout=timeout)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------
# the bare handler (a process of its own)
# ---------------------------------------------------------------------------


def serve_bare(port: int, body_file: str) -> None:
    """``GET /api/case/{guid}``: the stored envelope bytes, nothing else."""
    from aiohttp import web

    body = Path(body_file).read_bytes()

    async def retrieve_case(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/case/{case_guid}", retrieve_case)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------------------
# load generation
# ---------------------------------------------------------------------------


def load_with_aiohttp(url: str, headers: dict[str, str], connections: int, duration: float) -> None:
    """Fallback when wrk is missing: prints wrk's two lines that the parser reads."""
    import aiohttp

    async def run() -> tuple[int, int]:
        done = errors = 0
        deadline = time.monotonic() + duration
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def worker() -> None:
                nonlocal done, errors
                while time.monotonic() < deadline:
                    async with session.get(url) as response:
                        await response.read()
                        if response.status != 200:
                            errors += 1
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
    wrk: str | None = field(default_factory=lambda: shutil.which("wrk"))

    def run(self, url: str, headers: dict[str, str]) -> float:
        if self.wrk is not None:
            command = [
                self.wrk,
                "-t1",
                f"-c{self.connections}",
                f"-d{self.duration:g}s",
                "--latency",
            ]
            for name, value in headers.items():
                command += ["-H", f"{name}: {value}"]
            command.append(url)
        else:
            command = [
                sys.executable,
                __file__,
                "load",
                url,
                json.dumps(headers),
                str(self.connections),
                str(self.duration),
            ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        if errors:
            raise RuntimeError(f"{errors.group(1)} error answers from {url}:\n{output}")
        if re.search(r"Socket errors: .*(read|write|timeout) [1-9]", output):
            raise RuntimeError(f"socket errors against {url}:\n{output}")
        found = re.search(r"Requests/sec:\s+([0-9.]+)", output)
        if found is None:
            raise RuntimeError(f"no Requests/sec in the load generator's output:\n{output}")
        return float(found.group(1))


# ---------------------------------------------------------------------------
# the fusion-server process
# ---------------------------------------------------------------------------


def _request(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return response.read(), dict(response.headers)


class FusionServerProcess:
    def __init__(
        self, workdir: Path, store_url: str, log_level: str, profile: Path | None = None
    ) -> None:
        from fusion.server.auth.basic import hash_password

        self.port = free_port()
        data_dir = workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "server": {"host": "127.0.0.1", "port": self.port, "access_log": False},
            "shared_store": {"url": store_url},
            "storage": {"data_dir": str(data_dir)},
            "auth": {
                "backend": {
                    "type": "basic",
                    "users": [
                        {
                            "username": USERNAME,
                            "password_hash": hash_password(PASSWORD),
                            "groups": ["analysts"],
                        }
                    ],
                },
                "api_keys": [{"username": "robot", "groups": ["robots"], "key": API_KEY}],
            },
            "info": {"api": "bench", "version": "1"},
            "case": {},
        }
        path = workdir / "server.json"
        path.write_text(json.dumps(config))
        self.log = (workdir / "server.log").open("wb")
        python = [sys.executable]
        if profile is not None:
            # Written when the server exits cleanly (SIGTERM is a graceful exit).
            python += ["-m", "cProfile", "-o", str(profile)]
        self.process = subprocess.Popen(
            [*python, "-m", "fusion.server", "serve", "--config", str(path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FUSION_LOG_LEVEL": log_level},
        )
        _wait_port(self.port, self.process)
        self.url = f"http://127.0.0.1:{self.port}"

    def create_case(self) -> str:
        body = json.dumps({"name": "bench", "acs": ["robots", "analysts"]}).encode()
        raw, _ = _request(
            self.url + "/api/case",
            data=body,
            headers={"X-Fusion-API-Token": API_KEY, "Content-Type": "application/json"},
        )
        guid: str = json.loads(raw)["data"]["guid"]
        return guid

    def login(self) -> str:
        body = json.dumps({"data": {"username": USERNAME, "password": PASSWORD}}).encode()
        _, headers = _request(
            self.url + "/api/auth/login",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        return cookie

    def stop(self) -> None:
        _stop(self.process)
        self.log.close()


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def _measure_store(
    store: str,
    store_url: str,
    load: Load,
    rounds: int,
    log_level: str,
    workdir: Path,
    bare_port: int,
    body_file: Path,
) -> dict[str, list[float]]:
    server = FusionServerProcess(workdir / store, store_url, log_level)
    try:
        guid = server.create_case()
        path = f"/api/case/{guid}"
        body, _ = _request(server.url + path, headers={"X-Fusion-API-Token": API_KEY})
        cookie = server.login()
        session_body, _ = _request(server.url + path, headers={"Cookie": cookie})
        if session_body != body:
            raise RuntimeError("the session path answers other bytes than the key path")
        # The bare handler answers exactly these bytes (the same guid in its path).
        body_file.write_bytes(body)
        bare = subprocess.Popen(
            [sys.executable, __file__, "bare", str(bare_port), str(body_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_port(bare_port, bare)
            bare_body, _ = _request(f"http://127.0.0.1:{bare_port}{path}")
            assert bare_body == body
            results: dict[str, list[float]] = {"bare": [], "key": [], "session": []}
            runs = [
                ("bare", f"http://127.0.0.1:{bare_port}{path}", {}),
                ("key", server.url + path, {"X-Fusion-API-Token": API_KEY}),
                ("session", server.url + path, {"Cookie": cookie}),
            ]
            # Warm-up (connections, caches, the JIT-less interpreter's first calls).
            for _, url, headers in runs:
                Load(load.connections, 1.0, load.wrk).run(url, headers)
            for _ in range(rounds):
                for name, url, headers in runs:
                    results[name].append(load.run(url, headers))
                    print(f"  {store:6} {name:8} {results[name][-1]:10.0f} req/s", flush=True)
            results["bare"].append(load.run(runs[0][1], {}))
            print(f"  {store:6} {'bare':8} {results['bare'][-1]:10.0f} req/s", flush=True)
            return results
        finally:
            _stop(bare)
    finally:
        server.stop()


def _profile_store(
    store: str, store_url: str, load: Load, log_level: str, workdir: Path, lines: int
) -> None:
    """One load run per path with the server under cProfile; prints where its time goes."""
    import pstats

    for name in ("key", "session"):
        output = workdir / f"{store}-{name}.prof"
        server = FusionServerProcess(
            workdir / f"profile-{store}-{name}", store_url, log_level, output
        )
        try:
            guid = server.create_case()
            headers = (
                {"X-Fusion-API-Token": API_KEY} if name == "key" else {"Cookie": server.login()}
            )
            rate = load.run(f"{server.url}/api/case/{guid}", headers)
        finally:
            server.stop()
        print(f"\n--- {store} {name} path under cProfile ({rate:.0f} req/s, profiler included)")
        stats = pstats.Stats(str(output))
        stats.sort_stats("tottime").print_stats(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per store")
    parser.add_argument("--stores", default="memory,redis")
    parser.add_argument(
        "--log-level", default="INFO", help="FUSION_LOG_LEVEL of the server (INFO: its default)"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="LINES",
        help="after measuring, run each path once more with the server under cProfile "
        "and print its LINES most costly functions",
    )
    args = parser.parse_args()

    load = Load(args.connections, args.duration)
    print(
        f"load: {'wrk' if load.wrk else 'aiohttp (wrk not found)'}, {args.connections} "
        f"connections, {args.duration:g} s per run, {args.rounds} rounds; "
        f"server log level {args.log_level}; {os.cpu_count()} CPUs",
        flush=True,
    )
    all_results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="fusion-bench-") as tmp:
        workdir = Path(tmp)
        bare_port = free_port()
        for store in args.stores.split(","):
            if store == "memory":
                all_results[store] = _measure_store(
                    store,
                    "memory://",
                    load,
                    args.rounds,
                    args.log_level,
                    workdir,
                    bare_port,
                    workdir / "body.json",
                )
                if args.profile:
                    _profile_store(store, "memory://", load, args.log_level, workdir, args.profile)
            elif store == "redis":
                from fusion_testing.redis import RedisServer

                with RedisServer() as redis:
                    all_results[store] = _measure_store(
                        store,
                        redis.url,
                        load,
                        args.rounds,
                        args.log_level,
                        workdir,
                        bare_port,
                        workdir / "body.json",
                    )
                    if args.profile:
                        _profile_store(
                            store, redis.url, load, args.log_level, workdir, args.profile
                        )
            else:
                parser.error(f"unknown store {store!r}: memory or redis")

    print()
    # us/req: the server's time per request at this load (one core); "+us" is what
    # the framework adds to the bare handler, a figure steadier than the ratio on a
    # busy machine.
    print(
        f"{'store':8} {'path':8} {'req/s':>10} {'us/req':>7} {'+us':>6} {'runs':>24} "
        f"{'ratio':>6} {'target':>7}"
    )
    missed = []
    for store, results in all_results.items():
        bare = statistics.mean(results["bare"])
        spread = (max(results["bare"]) - min(results["bare"])) / bare
        runs = ", ".join(f"{value:.0f}" for value in results["bare"])
        print(f"{store:8} {'bare':8} {bare:10.0f} {1e6 / bare:7.1f} {'':>6} {runs:>24}")
        print(f"{'':8} {'':8} {'':>10} {'':>7} {'':>6} {f'(bare spread {spread:.0%})':>24}")
        for name in ("key", "session"):
            value = statistics.mean(results[name])
            ratio = value / bare
            target = TARGETS[(store, name)]
            runs = ", ".join(f"{run:.0f}" for run in results[name])
            verdict = "ok" if ratio >= target else "MISSED"
            print(
                f"{'':8} {name:8} {value:10.0f} {1e6 / value:7.1f} "
                f"{1e6 / value - 1e6 / bare:+6.1f} {runs:>24} {ratio:6.0%} "
                f"{f'>={target:.0%}':>7} {verdict}"
            )
            if ratio < target:
                missed.append(f"{store}/{name}")
    if missed:
        print(f"\ntargets missed: {', '.join(missed)}")
        return 1
    print("\nevery target met")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "bare":
        serve_bare(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "load":
        load_with_aiohttp(
            sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        )
    else:
        sys.exit(main())
