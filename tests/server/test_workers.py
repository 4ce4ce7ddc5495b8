"""``fusion-server serve --workers N``: N processes on one port, restarted, stopped together.

Over real sockets, on a real redis-server: the workers' PIDs come from the
tests' service (fusion_testing.workers), asked over fresh connections.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusion_testing.fixtures_cli import MainRunner
from fusion_testing.fixtures_server import server_config_dict, write_config
from fusion_testing.workers import WorkersProcess, fetch_pid, process_gone, write_pid_app

from fusion.server.cli import main


@pytest.fixture
def redis_config(tmp_path: Path, redis_url: str) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = server_config_dict(data_dir, shared_store={"url": redis_url})
    return write_config(tmp_path / "config.yml", config)


@pytest.fixture
def masters(tmp_path: Path) -> Iterator[list[WorkersProcess]]:
    started: list[WorkersProcess] = []
    yield started
    for master in started:
        master.stop()


def start_master(
    masters: list[WorkersProcess], tmp_path: Path, config: Path, workers: int = 2
) -> WorkersProcess:
    app = write_pid_app(tmp_path)
    master = WorkersProcess(
        ["--app", app, "--config", str(config), "--workers", str(workers)], cwd=tmp_path
    )
    masters.append(master.start())
    return master


@pytest.mark.redis
async def test_two_workers_serve_one_port_and_sigterm_stops_them_all(
    tmp_path: Path, redis_config: Path, masters: list[WorkersProcess]
) -> None:
    master = start_master(masters, tmp_path, redis_config)
    pids = await master.pids(lambda seen: len(seen) >= 2)
    assert len(pids) == 2
    assert master.pid not in pids
    for pid in pids:
        assert f"(pid {pid})" in master.wait_for_log(rf"worker \d started \(pid {pid}\)")[0]
    assert master.stop() == 0
    assert all(process_gone(pid) for pid in pids)
    log = master.log()
    for pid in pids:
        assert f"(pid {pid}) stopped (code 0)" in log
    assert "all 2 workers stopped" in log


@pytest.mark.redis
async def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(
    tmp_path: Path, redis_config: Path, masters: list[WorkersProcess]
) -> None:
    master = start_master(masters, tmp_path, redis_config)
    first, second = await master.pids(lambda seen: len(seen) >= 2)
    os.kill(first, signal.SIGKILL)
    master.wait_for_log(rf"\(pid {first}\) was killed by signal 9.*restarting it")
    # Every request is answered meanwhile (by the survivor, then also by the new one).
    seen = await master.pids(lambda seen: bool(seen - {first, second}))
    assert first not in seen
    (restarted,) = seen - {second}
    master.wait_for_log(rf"worker \d started \(pid {restarted}\)")
    assert master.stop() == 0


@pytest.mark.redis
async def test_a_worker_that_keeps_dying_is_restarted_after_a_growing_delay(
    tmp_path: Path, redis_url: str, masters: list[WorkersProcess]
) -> None:
    # A factory that always raises: each worker exits at once with code 1.
    (tmp_path / "broken.py").write_text(
        "def make(config):\n    raise RuntimeError('broken on purpose')\n"
    )
    config = write_config(
        tmp_path / "config.yml",
        server_config_dict(tmp_path, shared_store={"url": redis_url}),
    )
    master = WorkersProcess(
        ["--app", "broken:make", "--config", str(config), "--workers", "2"], cwd=tmp_path
    )
    masters.append(master.launch())  # no worker ever listens
    master.wait_for_log(r"worker 1 \(pid \d+\) exited with code 1 .*restarting it in 0\.5 s")
    master.wait_for_log(r"worker 1 \(pid \d+\) exited with code 1 .*restarting it in 1\.0 s")
    master.wait_for_log(r"worker 1 \(pid \d+\) exited with code 1 .*restarting it in 2\.0 s")
    assert master.stop() == 0


@pytest.mark.redis
async def test_workers_stop_when_their_master_is_killed(
    tmp_path: Path, redis_config: Path, masters: list[WorkersProcess]
) -> None:
    master = start_master(masters, tmp_path, redis_config)
    pids = await master.pids(lambda seen: len(seen) >= 2)
    assert master.process is not None
    master.process.kill()
    master.process.wait()
    for pid in pids:
        master.wait_for(
            functools.partial(process_gone, pid), f"worker {pid} to exit", while_running=False
        )
    assert "master process" in master.log()


def test_memory_store_with_several_workers_is_refused(run_main: MainRunner, tmp_path: Path) -> None:
    result = run_main(
        main,
        "serve",
        "--data-dir",
        str(tmp_path),
        "--workers",
        "2",
        env={"FUSION_ADMIN_PASSWORD": "a-password"},
    )
    assert result.code == 2
    assert result.stderr.count("\n") == 1
    assert "memory://" in result.stderr
    assert "--workers 2" in result.stderr


def test_memory_store_in_a_config_file_with_several_workers_is_refused(
    run_main: MainRunner, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.yml", server_config_dict(tmp_path))
    result = run_main(main, "serve", "--config", str(config), "--workers", "3")
    assert result.code == 2
    assert result.stderr.startswith("fusion-server: error: --workers 3 needs a shared store")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_workers_must_be_a_positive_number(run_main: MainRunner, value: str) -> None:
    result = run_main(main, "serve", "--workers", value)
    assert result.code == 2
    assert "--workers: expected a whole number >= 1" in result.stderr


async def test_fetch_pid_of_a_single_process_server(
    tmp_path: Path, masters: list[WorkersProcess]
) -> None:
    # --workers 1 (the default): the process itself serves, no master.
    config = write_config(tmp_path / "config.yml", server_config_dict(tmp_path))
    master = WorkersProcess(
        ["--app", write_pid_app(tmp_path), "--config", str(config)], cwd=tmp_path
    )
    masters.append(master.start())
    assert await fetch_pid(master.url) == master.pid
