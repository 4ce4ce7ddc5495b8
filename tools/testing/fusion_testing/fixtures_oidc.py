"""Fixtures running the test OpenID Connect provider (see fusion_testing.oidc_issuer)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fusion_testing.oidc_issuer import OIDCIssuer

__all__ = ["keycloak_realm", "oidc_issuer"]


@pytest.fixture
async def oidc_issuer() -> AsyncIterator[OIDCIssuer]:
    """A started provider on a free loopback port (client ``fusion``), stopped after the test."""
    issuer = OIDCIssuer()
    await issuer.start()
    try:
        yield issuer
    finally:
        await issuer.stop()


@pytest.fixture
async def keycloak_realm() -> AsyncIterator[OIDCIssuer]:
    """The provider laid out as the Keycloak realm ``cert`` (client ``fusion``)."""
    issuer = OIDCIssuer(realm="cert", redirect_uri="http://127.0.0.1/login")
    await issuer.start()
    try:
        yield issuer
    finally:
        await issuer.stop()
