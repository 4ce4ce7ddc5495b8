"""The tutorial's triage service (examples/triage_service.py) for the ``fusion-client`` tests.

- ``triage_replicas``: two ``fusion-server serve --app triage_service:create_app``
  processes on one real Redis and one data directory (module scope), with the
  example's configuration plus a robot API key (:data:`TRIAGE_ROBOT_KEY`);
- :func:`cli_process`: the ``fusion-client`` command as a process, from the
  examples directory (so ``--case-type triage_service:TriageCase`` imports).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from fusion_testing.fixtures_server import ServerProcess
from fusion_testing.redis import RedisServer

__all__ = [
    "EXAMPLES",
    "TRIAGE_CASE_TYPE",
    "TRIAGE_PASSWORD",
    "TRIAGE_ROBOT_KEY",
    "TriageReplicas",
    "cli_argv",
    "triage_replicas",
]

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TRIAGE_PASSWORD = "change-me-triage"  # noqa: S105 (the example's user "analyst")
TRIAGE_ROBOT_KEY = "triage-robot-key-0123456789"
TRIAGE_CASE_TYPE = "triage_service:TriageCase"


@dataclass
class TriageReplicas:
    """Two replicas of one triage service."""

    one: ServerProcess
    two: ServerProcess
    data: Path

    @property
    def urls(self) -> list[str]:
        return [self.one.url, self.two.url]


def _config(directory: Path) -> Path:
    import yaml  # the example's YAML, plus a robot key (imported here: only these tests need it)

    config = yaml.safe_load((EXAMPLES / "triage.yml").read_text())
    config["auth"]["api_keys"] = [
        {"username": "robot", "groups": ["analysts"], "key": TRIAGE_ROBOT_KEY}
    ]
    config["constant"]["path"] = str(EXAMPLES / "triage-constant.yml")
    path = directory / "triage.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def triage_replicas(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TriageReplicas]:
    """Two triage replicas on the shared redis-server (flushed first), stopped at the end."""
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    directory = tmp_path_factory.mktemp("triage")
    config = _config(directory)
    env = {"TRIAGE_STORE": redis_server.url, "TRIAGE_DATA": str(directory / "data")}
    args = ["--app", "triage_service:create_app", "--config", str(config)]
    started: list[ServerProcess] = []
    try:
        for _ in range(2):
            started.append(ServerProcess(args, cwd=EXAMPLES, env=env).start())
        yield TriageReplicas(started[0], started[1], directory / "data")
    finally:
        for replica in started:
            replica.stop()
    for replica in started:
        output = replica.output.decode(errors="replace")
        assert "Traceback" not in output, output[-3000:]


def cli_argv(*args: str) -> list[str]:
    """``python -m fusion.client ARGS`` (run it with ``cwd=EXAMPLES`` for the case type)."""
    return [sys.executable, "-m", "fusion.client", *args]


def cli_env(home: Path, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The environment of a command process: its own config dir, no FUSION_* of the caller."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FUSION_")}
    env.update({"XDG_CONFIG_HOME": str(home), "HOME": str(home), **dict(extra)})
    return env
