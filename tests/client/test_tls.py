"""TLS: a private CA generated here, CA files, fingerprint pinning (right and wrong)."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fusion.client import (
    FusionClient,
    FusionClientConfig,
    FusionConnectionError,
    FusionInfoAPIClient,
)
from fusion.concept import ConceptError, Info
from fusion.helper.config import ConfigError, TLSConfig

if TYPE_CHECKING:
    from fusion_testing.tls import TLSFiles
    from tests.client.conftest import StartServer


@pytest.fixture
async def tls_url(tls_files: TLSFiles, start_protocol_server: StartServer) -> str:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.cert_file, tls_files.key_file)
    return (await start_protocol_server(context)).url


async def _info(config: FusionClientConfig) -> Info:
    async with FusionClient(config) as client:
        return await FusionInfoAPIClient(client).info()


async def test_unknown_ca_is_refused(tls_url: str) -> None:
    with pytest.raises(FusionConnectionError, match="certificate"):
        await _info(FusionClientConfig(api_url=tls_url))


async def test_private_ca_file_is_trusted(tls_url: str, tls_files: TLSFiles) -> None:
    config = FusionClientConfig.from_dict(
        {"api_url": tls_url, "ssl": {"ca_file": str(tls_files.ca_file)}}
    )
    assert (await _info(config)).api == "fusion-test"


async def test_right_fingerprint_is_accepted(tls_url: str, tls_files: TLSFiles) -> None:
    colon_form = ":".join(tls_files.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    for fingerprint in (tls_files.fingerprint, colon_form):
        config = FusionClientConfig.from_dict({"api_url": tls_url, "ssl": fingerprint})
        assert (await _info(config)).api == "fusion-test"


async def test_wrong_fingerprint_is_refused(tls_url: str, tls_files: TLSFiles) -> None:
    wrong = hashlib.sha256(b"another certificate").hexdigest()
    config = FusionClientConfig.from_dict({"api_url": tls_url, "ssl": wrong})
    with pytest.raises(FusionConnectionError, match="pinned fingerprint"):
        await _info(config)


async def test_verify_false_skips_checks(tls_url: str) -> None:
    config = FusionClientConfig.from_dict({"api_url": tls_url, "ssl": False})
    assert (await _info(config)).version == "9.9.9"


def test_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    config = FusionClientConfig.from_dict(
        {"api_url": "https://127.0.0.1:1", "ssl": {"ca_file": str(tmp_path / "none.pem")}}
    )
    with pytest.raises(ConfigError, match="cannot load CA certificates"):
        FusionClient(config)


def test_the_old_mapping_keys_name_the_new_ones(tls_files: TLSFiles) -> None:
    with pytest.raises(ConceptError, match=r"unknown key 'cafile' \(did you mean 'ca_file'\?\)"):
        FusionClientConfig(api_url="https://127.0.0.1:1", ssl={"cafile": str(tls_files.ca_file)})  # type: ignore[arg-type]
    with pytest.raises(ConceptError, match="unknown field `cafile`"):
        FusionClientConfig.from_dict(
            {"api_url": "https://127.0.0.1:1", "ssl": {"cafile": str(tls_files.ca_file)}}
        )


async def test_every_spelling_is_one_tls_config(tls_url: str, tls_files: TLSFiles) -> None:
    pinned = FusionClientConfig(api_url=tls_url, ssl=tls_files.fingerprint)
    assert pinned.ssl == TLSConfig(fingerprint=tls_files.fingerprint)
    assert FusionClientConfig(api_url=tls_url, ssl=False).ssl == TLSConfig(verify=False)
    trusted = FusionClientConfig(api_url=tls_url, ssl=TLSConfig(ca_file=str(tls_files.ca_file)))
    assert (await _info(trusted)).api == "fusion-test"
