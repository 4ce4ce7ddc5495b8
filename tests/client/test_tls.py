"""TLS: a private CA generated here, CA files, fingerprint pinning (right and wrong)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fusion.client import (
    FusionClient,
    FusionClientConfig,
    FusionConnectionError,
    FusionInfoAPIClient,
)
from fusion.concept import Info
from fusion.helper.config import ConfigError

if TYPE_CHECKING:
    from tests.client.conftest import StartServer


class TLSFiles(NamedTuple):
    ca_file: Path
    cert_file: Path
    key_file: Path
    fingerprint: str  # hex SHA-256 of the server certificate (DER)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls_files(directory: Path) -> TLSFiles:
    """A private CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Fusion Test CA"))
        .issuer_name(_name("Fusion Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    fingerprint = hashlib.sha256(server_cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return TLSFiles(ca_file, cert_file, key_file, fingerprint)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


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
        {"api_url": tls_url, "ssl": {"cafile": str(tls_files.ca_file)}}
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
        {"api_url": "https://127.0.0.1:1", "ssl": {"cafile": str(tmp_path / "none.pem")}}
    )
    with pytest.raises(ConfigError, match="cannot load CA certificates"):
        FusionClient(config)
