"""Fixtures starting a real OpenLDAP slapd (see fusion_testing.slapd)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fusion.server.auth.ldap import LDAPBackend, LDAPBackendConfig
from fusion_testing.services import require_binary
from fusion_testing.slapd import SlapdServer

__all__ = ["ldap_backends", "slapd_factory", "slapd_server"]


def _binaries() -> tuple[Path, Path]:
    return require_binary("slapd", "slapd"), require_binary("slapadd", "slapd")


@pytest.fixture(scope="session")
def slapd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlapdServer]:
    """One slapd for the session, with StartTLS and ldaps:// (test CA in ``ca_file``).

    Tests must not stop it: use ``slapd_factory`` for fault tests.
    """
    slapd, slapadd = _binaries()
    server = SlapdServer(slapd, slapadd, tmp_path_factory.mktemp("slapd"), tls=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slapd_factory(tmp_path: Path) -> Iterator[Callable[..., SlapdServer]]:
    """Starts private slapd servers (``tls=`` as for SlapdServer), stopped after the test."""
    slapd, slapadd = _binaries()
    started: list[SlapdServer] = []

    def start(*, tls: bool = False) -> SlapdServer:
        server = SlapdServer(slapd, slapadd, tmp_path / f"slapd{len(started)}", tls=tls)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
async def ldap_backends() -> AsyncIterator[Callable[[LDAPBackendConfig], LDAPBackend]]:
    """``ldap_backends(config)``: the backend of ``config``, shut down after the test."""
    started: list[LDAPBackend] = []

    def build(config: LDAPBackendConfig) -> LDAPBackend:
        backend = config.build()
        started.append(backend)
        return backend

    yield build
    for backend in started:
        await backend.shutdown()
