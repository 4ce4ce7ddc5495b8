"""Prometheus metrics: off by default, counts what was done, adds up across workers.

The exposition is parsed with prometheus-client's own parser; the
multi-worker test runs ``fusion-server serve --workers 2`` on a real
redis-server and scrapes whichever worker answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from fusion_testing.clock import eventually
from fusion_testing.fixtures_cli import MainRunner
from fusion_testing.fixtures_server import (
    ROBOT_KEY,
    ServerFactory,
    server_config,
    server_config_dict,
    write_config,
)
from fusion_testing.services import free_port
from fusion_testing.workers import PID_ROUTE, WorkersProcess, write_pid_app
from prometheus_client.parser import text_string_to_metric_families

from fusion.helper.sse import iter_sse
from fusion.server.cli import main

ROBOT = {"X-Fusion-API-Token": ROBOT_KEY}
CASE_ROUTE = "/api/case/{case_guid}"


def metric_value(text: str, sample_name: str, **labels: str) -> float:
    """The sum of the samples named ``sample_name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def fresh_request(url: str, method: str, path: str, **kwargs: object) -> tuple[int, bytes]:
    """One request over a new connection (so the kernel may pick any worker)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(url, connector=connector) as session,
        session.request(method, path, **kwargs) as response,  # type: ignore[arg-type]
    ):
        return response.status, await response.read()


async def scrape(url: str, path: str = "/metrics") -> str:
    status, body = await fresh_request(url, "GET", path)
    assert status == 200, body
    return body.decode()


async def test_metrics_are_off_by_default(fusion_server: ServerFactory, tmp_path: Path) -> None:
    running = await fusion_server(server_config(tmp_path))
    status, _ = await fresh_request(running.url, "GET", "/metrics")
    assert status == 404


def test_prometheus_client_is_not_imported_without_the_section(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from fusion.server import FusionServer, FusionServerConfig\n"
        "FusionServer(FusionServerConfig(), store=None).build()\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout.strip()
    assert out == "False"


def test_the_section_without_the_extra_is_a_one_line_error(
    run_main: MainRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path / "config.yml", server_config_dict(tmp_path, metrics={"path": "/metrics"})
    )
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    result = run_main(main, "serve", "--config", str(config))
    assert result.code == 2
    assert result.stderr == (
        "fusion-server: error: the metrics section needs prometheus-client:"
        " pip install 'fusion-server[metrics]'\n"
    )


async def test_counts_requests_by_route_template_never_the_raw_path(
    fusion_server: ServerFactory, tmp_path: Path
) -> None:
    running = await fusion_server(server_config(tmp_path, metrics={"path": "/internal/metrics"}))
    before = await scrape(running.url, "/internal/metrics")
    guids = [str(uuid.uuid4()) for _ in range(4)]
    for guid in guids:
        status, _ = await fresh_request(running.url, "GET", f"/api/case/{guid}", headers=ROBOT)
        assert status == 404
    status, _ = await fresh_request(running.url, "GET", f"/api/nothing/{guids[0]}")
    assert status == 404
    body = msgspec.json.encode({"name": "bytes", "acs": ["robots"]})
    status, _ = await fresh_request(
        running.url,
        "POST",
        "/api/case",
        data=body,
        headers={**ROBOT, "Content-Type": "application/json"},
    )
    assert status == 200
    text = await scrape(running.url, "/internal/metrics")

    def delta(name: str, **labels: str) -> float:
        return metric_value(text, name, **labels) - metric_value(before, name, **labels)

    labels = {"route": CASE_ROUTE, "method": "GET"}
    assert delta("fusion_http_request_duration_seconds_count", **labels, status="404") == 4
    assert delta("fusion_http_request_duration_seconds_bucket", **labels, le="+Inf") == 4
    assert delta("fusion_http_request_duration_seconds_count", route="unmatched") == 1
    assert delta("fusion_http_request_body_bytes_total", route="/api/case") == len(body)
    for guid in guids:
        assert guid not in text
    # The scrapes themselves are not counted.
    assert "/internal/metrics" not in text


async def test_a_separate_port_serves_the_metrics_and_the_main_port_does_not(
    fusion_server: ServerFactory, tmp_path: Path
) -> None:
    port = free_port()
    running = await fusion_server(server_config(tmp_path, metrics={"port": port}))
    status, _ = await fresh_request(running.url, "GET", "/metrics")
    assert status == 404
    status, _ = await fresh_request(running.url, "GET", "/api/info")
    assert status == 200
    text = await scrape(f"http://127.0.0.1:{port}")
    assert (
        metric_value(
            text, "fusion_http_request_duration_seconds_count", route="/api/info", status="200"
        )
        >= 1
    )
    assert metric_value(text, "fusion_http_request_duration_seconds_count", route="/metrics") == 0


@pytest.fixture
def masters() -> Iterator[list[WorkersProcess]]:
    started: list[WorkersProcess] = []
    yield started
    for master in started:
        master.stop()


@pytest.mark.redis
async def test_counts_add_up_across_two_workers(
    tmp_path: Path, redis_url: str, masters: list[WorkersProcess]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = write_config(
        tmp_path / "config.yml",
        server_config_dict(
            data_dir,
            shared_store={"url": redis_url},
            event={"source": "metrics-test"},
            metrics={"path": "/metrics"},
        ),
    )
    master = WorkersProcess(
        ["--app", write_pid_app(tmp_path), "--config", str(config), "--workers", "2"],
        cwd=tmp_path,
    )
    masters.append(master.start())
    # Requests over fresh connections until both workers answered some.
    pids: dict[int, int] = {}
    async with asyncio.timeout(60):
        while len(pids) < 2:
            status, body = await fresh_request(master.url, "GET", PID_ROUTE)
            assert status == 200
            pid: int = msgspec.json.decode(body)["data"]["pid"]
            pids[pid] = pids.get(pid, 0) + 1
    asked = sum(pids.values())
    guids = [str(uuid.uuid4()) for _ in range(5)]
    for guid in guids:
        status, _ = await fresh_request(master.url, "GET", f"/api/case/{guid}", headers=ROBOT)
        assert status == 404
    wrong = {"data": {"username": "alice", "password": "not-her-password"}}
    status, _ = await fresh_request(master.url, "POST", "/api/auth/login", json=wrong)
    assert status == 400
    status, body = await fresh_request(
        master.url, "POST", "/api/case", json={"acs": ["robots"]}, headers=ROBOT
    )
    assert status == 200
    case_guid: str = msgspec.json.decode(body)["data"]["guid"]
    async with (
        aiohttp.ClientSession(master.url, headers=ROBOT) as watcher,
        watcher.get(f"/api/events/case/{case_guid}") as stream,
    ):
        assert stream.status == 200
        async for event in iter_sse(stream.content):
            assert event.data is not None
            break  # the first event: the stream is open
        text = await scrape(master.url)
        assert metric_value(text, "fusion_event_streams_open") == 1
    pid_route = {"route": PID_ROUTE, "method": "GET", "status": "200"}
    assert metric_value(text, "fusion_http_request_duration_seconds_count", **pid_route) == asked
    assert (
        metric_value(text, "fusion_http_request_duration_seconds_count", route=PID_ROUTE) == asked
    )
    assert (
        metric_value(
            text, "fusion_http_request_duration_seconds_count", route=CASE_ROUTE, status="404"
        )
        == 5
    )
    assert metric_value(text, "fusion_login_failures_total") == 1
    for guid in [*guids, case_guid]:
        assert guid not in text

    # A worker killed: what it counted still counts (its files stay in the directory).
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    master.wait_for_log(rf"\(pid {victim}\) was killed by signal 9")
    text = await scrape(master.url)
    assert metric_value(text, "fusion_http_request_duration_seconds_count", **pid_route) == asked
    assert metric_value(text, "fusion_login_failures_total") == 1


async def test_counts_events_published_sent_and_webhook_deliveries_by_outcome(
    fusion_server: ServerFactory, tmp_path: Path
) -> None:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        status = 200 if request.match_info["name"] == "ok" else 404
        return web.json_response({"status": status}, status=status)

    receiver = web.Application()
    receiver.router.add_post("/hooks/{name}", hook)
    hooks = (await fusion_server(receiver)).url
    config = server_config(
        tmp_path,
        metrics={},
        event={"webhook": f"{hooks}/hooks/ok", "webhook_prefixes": [f"{hooks}/hooks/"]},
    )
    running = await fusion_server(config)
    async with aiohttp.ClientSession(running.url, headers=ROBOT) as session:
        created = await session.post(
            "/api/case", json={"name": "m", "acs": ["robots"], "webhooks": [f"{hooks}/hooks/no"]}
        )
        assert created.status == 200, await created.text()
        guid = (await created.json())["data"]["guid"]
        stream = await session.get(f"/api/events/case/{guid}")
        try:
            events = iter_sse(stream.content)
            assert msgspec.json.decode((await anext(events)).data)["category"] == "subscribers"
            updated = await session.put(f"/api/case/{guid}", json={"description": "d"})
            assert updated.status == 200
            async with asyncio.timeout(30):
                while msgspec.json.decode((await anext(events)).data)["category"] != "update_case":
                    pass
        finally:
            stream.close()

    async def counted() -> bool:
        text = await scrape(running.url)
        return (
            metric_value(text, "fusion_webhook_deliveries_total", outcome="delivered") == 2
            and metric_value(text, "fusion_webhook_deliveries_total", outcome="refused") == 2
        )

    # Two events (create, update), each to the global webhook (200) and the case's (404).
    await eventually(counted, "both events' webhook deliveries counted")
    text = await scrape(running.url)
    assert metric_value(text, "fusion_events_published_total", category="create_case") == 1
    assert metric_value(text, "fusion_events_published_total", category="update_case") == 1
    assert metric_value(text, "fusion_events_sent_total") >= 1
    assert metric_value(text, "fusion_webhook_deliveries_total", outcome="failed") == 0
