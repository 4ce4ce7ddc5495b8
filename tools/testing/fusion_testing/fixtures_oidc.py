"""Fixtures running the test OpenID Connect provider (see fusion_testing.oidc_issuer)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fusion_testing.oidc_issuer import OIDCIssuer

__all__ = ["oidc_issuer"]


@pytest.fixture
async def oidc_issuer() -> AsyncIterator[OIDCIssuer]:
    """A started provider on a free loopback port (client ``fusion``), stopped after the test."""
    issuer = OIDCIssuer()
    await issuer.start()
    try:
        yield issuer
    finally:
        await issuer.stop()
