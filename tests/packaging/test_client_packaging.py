"""The client as users install it: three wheels in a fresh venv, none of the server's deps.

Builds the fusion-concept, fusion-helper and fusion-client wheels with uv,
installs them into a new virtual environment, drives a real loopback server
from there (library and console script), and checks that redis, ldap3, pyjwt
and argon2 are not installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fusion-concept", "fusion-helper", "fusion-client")
SERVER_ONLY = ("redis", "ldap3", "jwt", "argon2", "fusion.server")
SERVER_ONLY_DISTRIBUTIONS = ("redis", "ldap3", "pyjwt", "argon2-cffi", "fusion-server")

# Run inside the fresh venv: argv[1] is the service URL, argv[2:] the modules that must
# be absent.
CLIENT_SCRIPT = """
import asyncio, importlib.util, json, sys
import fusion.client
from fusion.client import FusionAPIError, FusionCaseAPIClient, FusionClient
from fusion.client import FusionClientConfig, FusionInfoAPIClient

async def main(url):
    async with FusionClient(FusionClientConfig(api_url=url, api_key="k")) as client:
        info = await FusionInfoAPIClient(client).info()
        case = await FusionCaseAPIClient(client).create({"name": "from the wheel"})
        try:
            await FusionCaseAPIClient(client).retrieve("00000000-0000-0000-0000-000000000000")
            missing = None
        except FusionAPIError as exc:
            missing = [exc.status, exc.message]
    absent = [name for name in sys.argv[2:] if importlib.util.find_spec(name) is None]
    result = {"info": info.to_dict(), "case": case.name, "missing": missing,
              "absent": sorted(absent), "file": fusion.client.__file__}
    print(json.dumps(result))

asyncio.run(main(sys.argv[1]))
"""


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    probe = subprocess.run([sys.executable, "-m", "uv", "--version"], capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "uv"]
    pytest.skip("uv not found (pip install uv): needed to build and install the wheels")


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = _uv()
    base = tmp_path_factory.mktemp("client-wheels")
    dist = base / "dist"
    for package in PACKAGES:
        subprocess.run(
            [*uv, "build", "--quiet", "--wheel", str(ROOT / "packages" / package), "-o", str(dist)],
            check=True,
            timeout=120,
        )
    venv = base / "venv"
    subprocess.run(
        [*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=60
    )
    wheels = sorted(str(path) for path in dist.glob("*.whl"))
    assert len(wheels) == 3, wheels
    subprocess.run(
        [*uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *wheels],
        check=True,
        timeout=180,
    )
    return venv


@pytest.fixture
async def tiny_service() -> AsyncIterator[str]:
    """A minimal protocol-speaking service on a loopback port."""
    cases: dict[str, object] = {}

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"status": 200, "data": {"api": "wheel", "version": "1"}})

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        body.setdefault("guid", "6f1b8a52-1f3b-4a6e-9a51-0d6f0a3c7e11")
        body.setdefault("created", "2026-11-28T04:00:00Z")
        cases[body["guid"]] = body
        return web.json_response({"status": 200, "data": body, "count": len(body)})

    async def retrieve(request: web.Request) -> web.Response:
        return web.json_response({"status": 404, "message": "case not found"}, status=404)

    app = web.Application()
    app.router.add_get("/api/info", info)
    app.router.add_post("/api/case", create)
    app.router.add_get("/api/case/{guid}", retrieve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


def test_wheels_keep_the_namespace_shared(client_venv: Path) -> None:
    dist = client_venv.parent / "dist"
    for wheel in dist.glob("*.whl"):
        names = zipfile.ZipFile(wheel).namelist()
        # No fusion/__init__.py: the four distributions share one namespace package.
        assert "fusion/__init__.py" not in names, wheel.name
    client_wheel = next(dist.glob("fusion_client-*.whl"))
    names = zipfile.ZipFile(client_wheel).namelist()
    assert "fusion/client/py.typed" in names
    assert not [name for name in names if name.startswith(("fusion/server", "fusion/helper"))]


def test_server_dependencies_are_not_installed(client_venv: Path) -> None:
    listed = subprocess.run(
        [
            *_uv(),
            "pip",
            "list",
            "--format",
            "json",
            "--python",
            str(client_venv / "bin" / "python"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    installed = {item["name"].lower() for item in msgspec.json.decode(listed)}
    assert {"fusion-client", "fusion-helper", "fusion-concept", "aiohttp", "msgspec"} <= installed
    assert not installed & set(SERVER_ONLY_DISTRIBUTIONS)


async def test_client_works_from_the_wheels(client_venv: Path, tiny_service: str) -> None:
    python = client_venv / "bin" / "python"
    process = await asyncio.create_subprocess_exec(
        str(python), "-c", CLIENT_SCRIPT, tiny_service, *SERVER_ONLY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=client_venv,  # not the repository: only the installed wheels are importable
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(client_venv)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    result = msgspec.json.decode(out)
    assert result["info"] == {"api": "wheel", "version": "1"}
    assert result["case"] == "from the wheel"
    assert result["missing"] == [404, "case not found"]
    assert result["absent"] == sorted(SERVER_ONLY)
    assert str(client_venv) in result["file"]

    script = client_venv / "bin" / "fusion-client"
    process = await asyncio.create_subprocess_exec(
        str(script), "--url", tiny_service, "--json", "info",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", ""), "XDG_CONFIG_HOME": str(client_venv)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert msgspec.json.decode(out) == {"api": "wheel", "version": "1"}
