"""Downloads: streaming to disk, hostile file names, atomicity, progress."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import pytest

from fusion.client import (
    FusionAPIError,
    FusionClient,
    FusionClientConfig,
    FusionClientError,
    FusionConnectionError,
    FusionDownloadAPIClient,
    safe_filename,
)
from fusion.concept import PendingDownloadKey

if TYPE_CHECKING:
    from tests.client.conftest import RunningServer


def _listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def _key(server: RunningServer) -> PendingDownloadKey:
    return PendingDownloadKey(guid=UUID(server.download_guid), token=server.download_token)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        ("/absolute/path/x.bin", "x.bin"),
        ("..", "fallback"),
        (".", "fallback"),
        (".hidden", "hidden"),
        ("a\x00b\nc\x7f", "a_b_c_"),
        ('con:"tricky"?*.txt', "con__tricky___.txt"),
        ("", "fallback"),
        (None, "fallback"),
        ("é" * 200, "é" * 127),
    ],
)
def test_safe_filename(name: str | None, expected: str) -> None:
    assert safe_filename(name, fallback="fallback") == expected


async def test_download_into_directory_uses_sanitised_name(
    protocol_server: RunningServer, tmp_path: Path
) -> None:
    protocol_server.state.download_body = os.urandom(3 * 1024 * 1024 + 7)
    seen: list[tuple[int, int | None]] = []
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        path = await FusionDownloadAPIClient(client).download(
            _key(protocol_server), tmp_path, progress=lambda done, total: seen.append((done, total))
        )
    # The hostile "../..\\.bashrc" lands inside tmp_path, neither escaping nor hidden.
    assert path == tmp_path / "bashrc"
    assert path.read_bytes() == protocol_server.state.download_body
    assert _listing(tmp_path) == ["bashrc"]
    total = len(protocol_server.state.download_body)
    assert seen[0] == (0, total)
    assert seen[-1] == (total, total)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    # No API key configured, none sent.
    assert "X-Fusion-API-Token" not in protocol_server.state.requests[-1].headers


async def test_download_to_file_path_and_by_url(
    protocol_server: RunningServer, tmp_path: Path
) -> None:
    protocol_server.state.download_body = b"evidence" * 1000
    target = tmp_path / "out.bin"
    config = FusionClientConfig(api_url=protocol_server.url, api_key=protocol_server.api_key)
    path = f"/api/download/{protocol_server.download_guid}/{protocol_server.download_token}"
    url = protocol_server.url + path
    async with FusionClient(config) as client:
        downloads = FusionDownloadAPIClient(client)
        assert await downloads.download(url, target) == target
        assert (
            hashlib.sha256(target.read_bytes()).hexdigest()
            == hashlib.sha256(protocol_server.state.download_body).hexdigest()
        )
        assert await downloads.download(path, tmp_path / "second") == tmp_path / "second"
    # The client's own server gets its key (a service route may need it).
    assert protocol_server.state.requests[-1].headers["X-Fusion-API-Token"] == config.api_key


async def test_unknown_key_is_404_and_leaves_nothing(
    protocol_server: RunningServer, tmp_path: Path
) -> None:
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        with pytest.raises(FusionAPIError) as caught:
            await FusionDownloadAPIClient(client).download(
                PendingDownloadKey(guid=UUID(int=1), token="nope"), tmp_path
            )
    assert caught.value.status == 404
    assert caught.value.message == "unknown or expired download key"
    assert _listing(tmp_path) == []


async def test_truncated_download_leaves_no_file(
    protocol_server: RunningServer, tmp_path: Path
) -> None:
    target = tmp_path / "partial.bin"
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        with pytest.raises(FusionConnectionError):
            await FusionDownloadAPIClient(client).download("/truncated", target)
    assert _listing(tmp_path) == []


async def test_max_size_aborts_and_keeps_existing_file(
    protocol_server: RunningServer, tmp_path: Path
) -> None:
    protocol_server.state.download_body = b"x" * 10_000
    target = tmp_path / "kept.bin"
    target.write_bytes(b"old")
    async with FusionClient(FusionClientConfig(api_url=protocol_server.url)) as client:
        with pytest.raises(FusionClientError, match="more than 100"):
            await FusionDownloadAPIClient(client).download(
                _key(protocol_server), target, max_size=100
            )
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["kept.bin"]


def test_bad_download_references_are_refused() -> None:
    client = FusionClient(FusionClientConfig(api_url="http://127.0.0.1:1"))
    downloads = FusionDownloadAPIClient(client)
    with pytest.raises(ValueError, match="expected http"):
        downloads.url_for("file:///etc/passwd")
    with pytest.raises(ValueError, match="invalid download key"):
        downloads.url_for("guid/token")
    key = PendingDownloadKey(guid=UUID(int=5), token="a/b?c")
    assert str(downloads.url_for(key)).endswith(f"/api/download/{UUID(int=5)}/a%2Fb%3Fc")
