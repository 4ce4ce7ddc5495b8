"""fusion.helper.config: TLS settings checked against a real TLS server; env references."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fusion.helper.config import (
    ConfigError,
    TLSConfig,
    env_ref,
    load_ssl_config,
    resolve_env_refs,
    tls_config,
)


class Certificate(NamedTuple):
    certfile: Path
    keyfile: Path
    pem: str
    sha256: str


def _self_signed(directory: Path) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fusion-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    certfile = directory / "cert.pem"
    keyfile = directory / "key.pem"
    certfile.write_bytes(pem)
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return Certificate(certfile, keyfile, pem.decode(), digest)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return _self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def tls_url(certificate: Certificate) -> AsyncIterator[str]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.certfile, certificate.keyfile)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def _fetch(url: str, ssl_setting: Any) -> str:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ssl_setting) as response:
        return await response.text()


async def test_system_cas_refuse_self_signed(tls_url: str) -> None:
    for value in (True, None):
        setting = load_ssl_config(value)
        assert setting is True
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _fetch(tls_url, setting)


async def test_no_verification(tls_url: str) -> None:
    assert load_ssl_config(False) is False
    assert await _fetch(tls_url, load_ssl_config(False)) == "hello"


async def test_fingerprint_pinning(tls_url: str, certificate: Certificate) -> None:
    plain = load_ssl_config(certificate.sha256)
    assert isinstance(plain, aiohttp.Fingerprint)
    assert await _fetch(tls_url, plain) == "hello"
    colons = ":".join(certificate.sha256[i : i + 2] for i in range(0, 64, 2)).upper()
    assert await _fetch(tls_url, load_ssl_config(colons)) == "hello"
    wrong = load_ssl_config("00" * 32)
    with pytest.raises(aiohttp.ServerFingerprintMismatch):
        await _fetch(tls_url, wrong)


async def test_ca_mapping(tls_url: str, certificate: Certificate) -> None:
    for value in (
        {"ca_file": str(certificate.certfile)},
        {"ca_data": certificate.pem},
        {"ca_path": str(certificate.certfile.parent), "ca_file": str(certificate.certfile)},
        TLSConfig(ca_file=str(certificate.certfile)),
    ):
        context = load_ssl_config(value)
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert await _fetch(tls_url, context) == "hello"


def test_every_spelling_is_one_shape(certificate: Certificate) -> None:
    assert tls_config(True) == tls_config(None) == tls_config("true") == TLSConfig()
    assert tls_config(False) == tls_config("false") == TLSConfig(verify=False)
    assert tls_config(certificate.sha256) == TLSConfig(fingerprint=certificate.sha256)
    shape = TLSConfig(ca_file="/ca.pem", cert_file="/c.pem", key_file="/k.pem")
    assert tls_config(shape) is shape
    assert tls_config({"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"}) == shape


async def test_the_ssl_context_of_the_shape_is_what_ldap_wraps_with(
    tls_url: str, certificate: Certificate
) -> None:
    """ssl_context() is a plain stdlib context: verified with CAs, unchecked with verify false."""
    port = int(tls_url.rsplit(":", 1)[1].strip("/"))
    trusted = TLSConfig(ca_file=str(certificate.certfile)).ssl_context()
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=trusted, server_hostname="127.0.0.1"
    )
    writer.close()
    await writer.wait_closed()
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(
            "127.0.0.1", port, ssl=TLSConfig().ssl_context(), server_hostname="127.0.0.1"
        )
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=TLSConfig(verify=False).ssl_context(), server_hostname="127.0.0.1"
    )
    writer.close()
    await writer.wait_closed()


def test_client_certificate(certificate: Certificate) -> None:
    context = load_ssl_config(
        {
            "ca_file": str(certificate.certfile),
            "cert_file": str(certificate.certfile),
            "key_file": str(certificate.keyfile),
        }
    )
    assert isinstance(context, ssl.SSLContext)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes", "ssl: fingerprint: 'yes' is not a SHA-256 fingerprint"),
        ("ab" * 31, "is not a SHA-256 fingerprint"),
        (42, "ssl: expected true, false, a SHA-256 fingerprint or a mapping of verify/ca_file"),
        ({"cafile": "/x"}, "ssl: unknown key 'cafile' (did you mean 'ca_file'?)"),
        ({"certfile": "/x"}, "ssl: unknown key 'certfile' (did you mean 'cert_file'?)"),
        ({"ca_file": 3}, "ssl: Expected `str | null`, got `int` - at `$.ca_file`"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ssl.ca_file: cannot load CA certificates"),
        ({"ca_data": "not a pem"}, "ssl.ca_data: cannot load CA certificates '<inline PEM>'"),
        ({"verify": False, "ca_file": "/x"}, "ssl: verify: false checks nothing"),
        ({"fingerprint": "ab" * 32, "ca_file": "/x"}, "ssl: fingerprint: a pinned certificate"),
    ],
)
def test_bad_ssl_values(value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_ssl_config(value)
    assert expected in str(info.value)


def test_bad_client_certificate(certificate: Certificate) -> None:
    with pytest.raises(ConfigError, match=r"client\.tls: key_file: needs cert_file"):
        load_ssl_config(
            {"ca_file": str(certificate.certfile), "key_file": "/k.pem"}, key="client.tls"
        )
    with pytest.raises(ConfigError, match=r"ssl\.cert_file: cannot load client certificate"):
        load_ssl_config({"ca_file": str(certificate.certfile), "cert_file": "/missing.pem"})


# -- environment references --------------------------------------------------

ENV = {"LDAP_PASSWORD": "s3cr$t{}", "HOST": "ldap.example.org", "EMPTY": ""}


def test_env_ref() -> None:
    assert env_ref("plain", ENV) == "plain"
    assert env_ref("${LDAP_PASSWORD}", ENV) == "s3cr$t{}"
    assert env_ref("ldaps://${HOST}:636", ENV) == "ldaps://ldap.example.org:636"
    assert env_ref("${MISSING:-fallback}", ENV) == "fallback"
    assert env_ref("${EMPTY:-fallback}", ENV) == ""
    assert env_ref("$${HOST} and ${HOST}", ENV) == "${HOST} and ldap.example.org"
    assert env_ref("cost: $5", ENV) == "cost: $5"


def test_env_ref_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSION_TEST_SECRET", "from-env")
    assert env_ref("${FUSION_TEST_SECRET}") == "from-env"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${MISSING}", "environment variable MISSING is not set"),
        ("${1BAD}", "invalid environment variable name '1BAD'"),
        ("${}", "invalid environment variable name ''"),
        ("abc ${HOST", "unterminated environment reference"),
    ],
)
def test_env_ref_errors(value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="^auth.password: " + expected.replace("$", r"\$")):
        env_ref(value, ENV, key="auth.password")


def test_resolve_env_refs_walks_config() -> None:
    config = {
        "auth": {"ldap": {"password": "${LDAP_PASSWORD}", "port": 636, "tls": True}},
        "servers": ["https://${HOST}/a", {"url": "${HOST}"}],
        "${HOST}": None,
    }
    assert resolve_env_refs(config, ENV) == {
        "auth": {"ldap": {"password": "s3cr$t{}", "port": 636, "tls": True}},
        "servers": ["https://ldap.example.org/a", {"url": "ldap.example.org"}],
        "${HOST}": None,  # keys are not resolved
    }
    assert config["auth"] == {"ldap": {"password": "${LDAP_PASSWORD}", "port": 636, "tls": True}}


def test_resolve_env_refs_names_the_key() -> None:
    config = {"auth": {"clients": [{"key": "ok"}, {"key": "${ROBOT_KEY}"}]}}
    with pytest.raises(ConfigError) as info:
        resolve_env_refs(config, ENV)
    assert str(info.value) == "auth.clients[1].key: environment variable ROBOT_KEY is not set"
