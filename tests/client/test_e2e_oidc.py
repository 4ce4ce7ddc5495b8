"""The client's OIDC login (code flow with PKCE and nonce) against a real fusion-server
whose backend talks to the test provider."""

from __future__ import annotations

from pathlib import Path

import pytest
from fusion_testing.fixtures_server import ServerFactory, server_config
from fusion_testing.oidc_issuer import OIDCIssuer, pkce_pair

from fusion.client import (
    FusionAPIError,
    FusionAuthAPIClient,
    FusionCaseAPIClient,
    FusionClient,
    FusionClientConfig,
)


async def test_login_code_with_pkce_and_nonce(
    oidc_issuer: OIDCIssuer, fusion_server: ServerFactory, tmp_path: Path
) -> None:
    backend = {
        "type": "oidc",
        "issuer": oidc_issuer.issuer,
        "client_id": oidc_issuer.client_id,
        "client_secret": oidc_issuer.client_secret,
        "redirect_uri": oidc_issuer.redirect_uri,
        "timeout": 2,
    }
    running = await fusion_server(server_config(tmp_path, auth={"backend": backend}))
    verifier, challenge = pkce_pair()
    async with FusionClient(FusionClientConfig(api_url=running.url)) as client:
        auth = FusionAuthAPIClient(client)
        config = await auth.config()
        assert config.type == "oidc"
        # A wrong verifier and a wrong nonce are refused (400), and log no one in.
        code = oidc_issuer.issue_code("alice", ["analysts"], code_challenge=challenge)
        with pytest.raises(FusionAPIError) as refused:
            await auth.login_code(code, code_verifier="x" * 43)
        assert refused.value.status == 400
        code = oidc_issuer.issue_code(
            "alice", ["analysts"], code_challenge=challenge, nonce="n-123"
        )
        with pytest.raises(FusionAPIError) as refused:
            await auth.login_code(code, code_verifier=verifier, nonce="other")
        assert refused.value.status == 400
        assert await auth.is_logged() is None
        # The right ones give a session that works for the case API.
        code = oidc_issuer.issue_code(
            "alice", ["analysts"], code_challenge=challenge, nonce="n-123"
        )
        identity = await auth.login_code(code, code_verifier=verifier, nonce="n-123")
        assert identity.username == "alice"
        assert identity.groups == {"analysts"}
        case = await FusionCaseAPIClient(client).create({"name": "oidc", "acs": ["analysts"]})
        assert [c.guid for c in await FusionCaseAPIClient(client).enumerate()] == [case.guid]
        await auth.logout()
        assert await auth.is_logged() is None
