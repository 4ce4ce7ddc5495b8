"""The OIDC backend against a test provider on loopback (fusion_testing.oidc_issuer)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from fusion_testing.oidc_issuer import OIDCIssuer, SigningKey, pkce_pair

from fusion.server.auth.backend import (
    BackendUnavailableError,
    FusionAuthBackendConfig,
    LoginBodyError,
)
from fusion.server.auth.oidc import OIDCBackend, OIDCBackendConfig

BackendFactory = Callable[..., Awaitable[OIDCBackend]]


def oidc_config(provider: OIDCIssuer, **overrides: Any) -> OIDCBackendConfig:
    fields: dict[str, Any] = {
        "type": "oidc",
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        "redirect_uri": provider.redirect_uri,
        "leeway": 5,
        "timeout": 2,
    }
    fields.update(overrides)
    return msgspec.convert(fields, OIDCBackendConfig)


@pytest.fixture
async def backend_of(oidc_issuer: OIDCIssuer) -> AsyncIterator[BackendFactory]:
    """Builds and starts backends for the test issuer; shut down after the test."""
    started: list[OIDCBackend] = []

    async def build(**overrides: Any) -> OIDCBackend:
        backend = oidc_config(oidc_issuer, **overrides).build()
        started.append(backend)
        await backend.startup()
        return backend

    yield build
    for backend in started:
        await backend.shutdown()


def identity_of(grant: Any) -> tuple[str, set[str]] | None:
    """(username, groups) of a login's Identity or of a bearer token's grant."""
    if grant is None:
        return None
    identity = getattr(grant, "identity", grant)
    return (identity.username, set(identity.groups))


# -- configuration ----------------------------------------------------------------


def test_config_is_found_by_tag() -> None:
    assert FusionAuthBackendConfig.for_type("oidc") is OIDCBackendConfig


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"algorithms": ["HS256"]}, "never none or HS"),
        ({"algorithms": ["RS256", "none"]}, "never none or HS"),
        ({"algorithms": ["RS256", "HS512"]}, "HS512"),
        ({"algorithms": []}, "must not be empty"),
        ({"issuer": "idp.example.org"}, "http"),
        ({"leeway": -1}, "leeway"),
        ({"username_claim": ""}, "username_claim"),
        ({"client_auth_method": "private_key_jwt"}, "client_auth_method"),
        ({"secret": "x"}, "secret"),
    ],
)
def test_bad_config_is_refused_with_a_message(fields: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {
        "type": "oidc",
        "issuer": "https://idp.example.org/realms/cert",
        "client_id": "fusion",
        "redirect_uri": "https://fusion.example.org/callback",
    }
    base.update(fields)
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(base, OIDCBackendConfig)


# -- authorization-code login -------------------------------------------------------


async def test_code_flow_gives_the_identity_from_the_id_token(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of()
    code = oidc_issuer.issue_code("alice", ["analysts", "admins"])
    identity = await backend.login({"code": code})
    assert identity_of(identity) == ("alice", {"analysts", "admins"})
    # A code works once.
    assert await backend.login({"code": code}) is None
    assert await backend.login({"code": "never-issued"}) is None


async def test_code_flow_with_pkce(oidc_issuer: OIDCIssuer, backend_of: BackendFactory) -> None:
    backend = await backend_of()
    verifier, challenge = pkce_pair()
    code = oidc_issuer.issue_code("bob", ["analysts"], code_challenge=challenge)
    identity = await backend.login({"code": code, "code_verifier": verifier})
    assert identity_of(identity) == ("bob", {"analysts"})
    other_verifier, _ = pkce_pair()
    code = oidc_issuer.issue_code("bob", code_challenge=challenge)
    assert await backend.login({"code": code, "code_verifier": other_verifier}) is None
    code = oidc_issuer.issue_code("bob", code_challenge=challenge)
    assert await backend.login({"code": code}) is None


async def test_code_flow_with_client_secret_post_and_the_access_token(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    # The test provider signs access tokens with its ES256 key.
    backend = await backend_of(
        client_auth_method="client_secret_post", identity_source="access_token"
    )
    code = oidc_issuer.issue_code("carol", ["responders"])
    assert identity_of(await backend.login({"code": code})) == ("carol", {"responders"})


async def test_code_for_another_redirect_uri_is_refused(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of()
    code = oidc_issuer.issue_code("alice", redirect_uri="https://evil.example.org/cb")
    assert await backend.login({"code": code}) is None


async def test_nonce_is_checked_when_given(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of()
    code = oidc_issuer.issue_code("alice", nonce="n-1")
    assert await backend.login({"code": code, "nonce": "n-2"}) is None
    code = oidc_issuer.issue_code("alice", nonce="n-1")
    assert identity_of(await backend.login({"code": code, "nonce": "n-1"})) == ("alice", set())


async def test_wrong_client_secret_is_a_server_problem(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of(client_secret="not-the-secret")
    code = oidc_issuer.issue_code("alice")
    with pytest.raises(BackendUnavailableError, match="client credentials"):
        await backend.login({"code": code})


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"code": ""},
        {"code": 12},
        {"username": "alice", "password": "x"},
        {"code": "c", "code_verifier": 1},
        {"code": "c", "code_verifier": ""},
        {"code": "c", "nonce": []},
    ],
)
async def test_malformed_login_body(backend_of: BackendFactory, body: dict[str, Any]) -> None:
    backend = await backend_of()
    with pytest.raises(LoginBodyError):
        await backend.login(body)


async def test_login_throttles_by_address_only(backend_of: BackendFactory) -> None:
    backend = await backend_of()
    assert backend.login_username({"code": "abc"}) is None


# -- Bearer tokens --------------------------------------------------------------------


async def test_bearer_tokens_signed_rs256_and_es256(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of()
    claims = oidc_issuer.claims("robot", ["automation"])
    for alg in ("RS256", "ES256"):
        token = oidc_issuer.mint(claims, key=oidc_issuer.key(alg))
        assert identity_of(await backend.authenticate_bearer(token)) == (
            "robot",
            {"automation"},
        )


async def test_nested_claims_and_allowed_groups(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of(
        username_claim="profile.login",
        groups_claim="realm_access.roles",
        allowed_groups=["cert"],
    )
    inside = oidc_issuer.claims(
        profile={"login": "dana"}, realm_access={"roles": ["cert", "user", 7]}
    )
    assert identity_of(await backend.authenticate_bearer(oidc_issuer.mint(inside))) == (
        "dana",
        {"cert", "user"},
    )
    outside = oidc_issuer.claims(profile={"login": "erin"}, realm_access={"roles": ["user"]})
    assert await backend.authenticate_bearer(oidc_issuer.mint(outside)) is None
    no_login = oidc_issuer.claims(realm_access={"roles": ["cert"]})
    assert await backend.authenticate_bearer(oidc_issuer.mint(no_login)) is None


async def test_a_single_group_string_and_no_groups_claim(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of(groups_claim="team")
    token = oidc_issuer.mint(oidc_issuer.claims("fred", team="blue"))
    assert identity_of(await backend.authenticate_bearer(token)) == ("fred", {"blue"})
    plain = await backend_of(groups_claim=None)
    token = oidc_issuer.mint(oidc_issuer.claims("fred", ["a"]))
    assert identity_of(await plain.authenticate_bearer(token)) == ("fred", set())


async def test_configured_audiences(oidc_issuer: OIDCIssuer, backend_of: BackendFactory) -> None:
    backend = await backend_of(audience=["fusion-api", "other"])
    good = oidc_issuer.mint(oidc_issuer.claims(aud=["account", "fusion-api"]))
    assert identity_of(await backend.authenticate_bearer(good)) == ("alice", set())
    # The client id is no longer enough once audiences are configured.
    assert await backend.authenticate_bearer(oidc_issuer.mint(oidc_issuer.claims())) is None


async def test_validated_tokens_are_cached_but_never_past_their_exp(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of(leeway=0, bearer_cache_ttl=60)
    now = int(time.time())
    token = oidc_issuer.mint(
        oidc_issuer.claims("gina", ["g"], iat=now - 5, nbf=now - 5, exp=now + 1)
    )
    first = await backend.authenticate_bearer(token)
    assert identity_of(first) == ("gina", {"g"})
    # The cached grant is frozen: no caller can change what the next one gets.
    assert first is not None
    assert isinstance(first.identity.groups, frozenset)
    assert identity_of(await backend.authenticate_bearer(token)) == ("gina", {"g"})
    await asyncio.sleep(max(0.0, now + 1.05 - time.time()))
    assert await backend.authenticate_bearer(token) is None


async def test_bearer_cache_is_bounded(oidc_issuer: OIDCIssuer, backend_of: BackendFactory) -> None:
    backend = await backend_of(bearer_cache_size=3)
    for index in range(10):
        token = oidc_issuer.mint(oidc_issuer.claims(f"user{index}"))
        assert await backend.authenticate_bearer(token) is not None
    assert len(backend._bearer_cache) == 3


# -- key rotation ----------------------------------------------------------------------


async def test_key_rotation_refetches_the_jwks_once(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of(jwks_min_refetch_interval=60)
    old_key = oidc_issuer.key("RS256")
    old_token = oidc_issuer.mint(oidc_issuer.claims("alice"))
    assert await backend.authenticate_bearer(old_token) is not None
    fetched = oidc_issuer.jwks_requests

    oidc_issuer.rotate("RS256")
    new_token = oidc_issuer.mint(oidc_issuer.claims("bob"))
    assert identity_of(await backend.authenticate_bearer(new_token)) == ("bob", set())
    assert oidc_issuer.jwks_requests == fetched + 1

    # A kid the provider never had: refused, and no new fetch within the interval.
    stranger = SigningKey(kid="unknown-kid", alg="RS256", private_key=old_key.private_key)
    token = oidc_issuer.mint(oidc_issuer.claims(), key=stranger)
    for _ in range(5):
        assert await backend.authenticate_bearer(token) is None
    assert oidc_issuer.jwks_requests == fetched + 1

    # The retired key left the JWKS: a fresh token signed with it is refused.
    retired = oidc_issuer.mint(oidc_issuer.claims("carol"), key=old_key)
    assert await backend.authenticate_bearer(retired) is None


async def test_jwks_is_refetched_after_its_ttl(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of(jwks_cache_ttl=0.2)
    token = oidc_issuer.mint(oidc_issuer.claims())
    assert await backend.authenticate_bearer(token) is not None
    fetched = oidc_issuer.jwks_requests
    backend._bearer_cache.clear()
    await asyncio.sleep(0.25)
    assert await backend.authenticate_bearer(token) is not None
    assert oidc_issuer.jwks_requests == fetched + 1


# -- forged tokens --------------------------------------------------------------------

FORGERIES: dict[str, Callable[[OIDCIssuer], str]] = {
    "garbage": lambda issuer: "not.a.jwt",
    "empty": lambda issuer: "",
    "wrong key, right kid": lambda issuer: issuer.mint(
        issuer.claims(), key=issuer.foreign_key("RS256", kid=issuer.key("RS256").kid)
    ),
    "wrong EC key, right kid": lambda issuer: issuer.mint(
        issuer.claims(), key=issuer.foreign_key("ES256", kid=issuer.key("ES256").kid)
    ),
    "alg none": lambda issuer: issuer.forge(issuer.claims(), alg="none"),
    "HS256 keyed with the public PEM": lambda issuer: issuer.forge(
        issuer.claims(), alg="HS256", secret=issuer.key("RS256").public_pem()
    ),
    "HS256 keyed with the JWK": lambda issuer: issuer.forge(
        issuer.claims(),
        alg="HS256",
        secret=json.dumps(issuer.key("RS256").public_jwk()).encode(),
    ),
    "RS256 header on the EC kid": lambda issuer: issuer.mint(
        issuer.claims(), key=issuer.key("RS256"), kid=issuer.key("ES256").kid
    ),
    "PS256 (not allowed)": lambda issuer: issuer.mint(
        issuer.claims(), key=issuer.key("RS256"), alg="PS256"
    ),
    "expired": lambda issuer: issuer.mint(
        issuer.claims(exp=int(time.time()) - 60, iat=int(time.time()) - 400)
    ),
    "not yet valid": lambda issuer: issuer.mint(issuer.claims(nbf=int(time.time()) + 60)),
    "issued in the future": lambda issuer: issuer.mint(issuer.claims(iat=int(time.time()) + 60)),
    "wrong aud": lambda issuer: issuer.mint(issuer.claims(aud="someone-else")),
    "wrong iss": lambda issuer: issuer.mint(issuer.claims(iss="http://127.0.0.1:1")),
    "no exp": lambda issuer: issuer.mint(issuer.claims(exp=None)),
    "no iss": lambda issuer: issuer.mint(issuer.claims(iss=None)),
    "no aud": lambda issuer: issuer.mint(issuer.claims(aud=None)),
    "no sub": lambda issuer: issuer.mint(issuer.claims(sub=None)),
    "no iat": lambda issuer: issuer.mint(issuer.claims(iat=None)),
    "no username": lambda issuer: issuer.mint(issuer.claims(preferred_username=None)),
    "username not a string": lambda issuer: issuer.mint(issuer.claims(preferred_username=["a"])),
    "tampered payload": lambda issuer: _tamper(issuer.mint(issuer.claims("alice"))),
}


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["preferred_username"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_forged_tokens_are_refused(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory, forgery: str
) -> None:
    backend = await backend_of()
    token = FORGERIES[forgery](oidc_issuer)
    assert await backend.authenticate_bearer(token) is None
    # ...and the same forgery as the ID token of a code exchange
    if token:
        code = oidc_issuer.issue_code("alice", id_token=token)
        assert await backend.login({"code": code}) is None


async def test_leeway_tolerates_small_clock_skew(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    now = int(time.time())
    skewed = oidc_issuer.mint(oidc_issuer.claims(exp=now - 10, nbf=now + 10, iat=now + 10))
    tolerant = await backend_of(leeway=30)
    assert await tolerant.authenticate_bearer(skewed) is not None
    strict = await backend_of(leeway=0)
    assert await strict.authenticate_bearer(skewed) is None


async def test_a_single_key_without_kid(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of(algorithms=["RS256"])
    # Only one RS256 key is published: a token without kid may use it.
    token = oidc_issuer.mint(oidc_issuer.claims("hugo"), kid=None)
    assert identity_of(await backend.authenticate_bearer(token)) == ("hugo", set())
    oidc_issuer.rotate("RS256", retire_previous=False)
    backend._keys_fetched_at = -float("inf")
    backend._bearer_cache.clear()
    # Two RS256 keys: a token without kid is ambiguous.
    assert await backend.authenticate_bearer(token) is None


# -- the provider going away -----------------------------------------------------------


async def test_provider_down_is_unavailable_then_recovers(oidc_issuer: OIDCIssuer) -> None:
    config = oidc_config(oidc_issuer)
    await oidc_issuer.stop()
    backend = config.build()
    started = time.monotonic()
    await backend.startup()  # the server still starts
    try:
        token = oidc_issuer.mint(oidc_issuer.claims())
        with pytest.raises(BackendUnavailableError, match="unreachable"):
            await backend.authenticate_bearer(token)
        with pytest.raises(BackendUnavailableError, match="unreachable"):
            await backend.login({"code": "anything"})
        assert time.monotonic() - started < 2
        assert backend.info().parameters["authorization_endpoint"] is None

        await oidc_issuer.start()
        assert identity_of(await backend.authenticate_bearer(token)) == ("alice", set())
        code = oidc_issuer.issue_code("alice")
        assert identity_of(await backend.login({"code": code})) == ("alice", set())

        # Known keys keep validating Bearer tokens while the provider is away;
        # the code exchange needs it.
        await oidc_issuer.stop()
        backend._bearer_cache.clear()
        assert await backend.authenticate_bearer(token) is not None
        with pytest.raises(BackendUnavailableError, match="token"):
            await backend.login({"code": code})
    finally:
        await backend.shutdown()


async def test_provider_answering_errors_is_unavailable(oidc_issuer: OIDCIssuer) -> None:
    backend = oidc_config(oidc_issuer, discovery_url=f"{oidc_issuer.issuer}/missing").build()
    try:
        with pytest.raises(BackendUnavailableError, match="HTTP 404"):
            await backend.login({"code": "c"})
    finally:
        await backend.shutdown()


async def test_discovery_naming_another_issuer_is_refused(oidc_issuer: OIDCIssuer) -> None:
    backend = oidc_config(
        oidc_issuer,
        issuer=oidc_issuer.issuer + "/realms/other",
        discovery_url=oidc_issuer.issuer + "/.well-known/openid-configuration",
    ).build()
    try:
        with pytest.raises(BackendUnavailableError, match="names issuer"):
            await backend.authenticate_bearer(oidc_issuer.mint(oidc_issuer.claims()))
    finally:
        await backend.shutdown()


async def test_info_reports_what_a_web_ui_needs_and_nothing_secret(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of(scopes=["openid", "profile"])
    info = backend.info()
    assert info.type == "oidc"
    assert info.parameters == {
        "issuer": oidc_issuer.issuer,
        "authorization_endpoint": f"{oidc_issuer.issuer}/authorize",
        "end_session_endpoint": None,
        "client_id": oidc_issuer.client_id,
        "redirect_uri": oidc_issuer.redirect_uri,
        "scopes": ["openid", "profile"],
    }
    assert oidc_issuer.client_secret not in json.dumps(info.parameters)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_secrets_with_reserved_characters(method: str) -> None:
    provider = OIDCIssuer(client_id="fusion:web", client_secret="p:ss w&rd/+%=")
    await provider.start()
    backend = oidc_config(provider, client_auth_method=method).build()
    try:
        await backend.startup()
        code = provider.issue_code("ivan", ["x"])
        assert identity_of(await backend.login({"code": code})) == ("ivan", {"x"})
    finally:
        await backend.shutdown()
        await provider.stop()


async def test_stale_keys_keep_working_and_failures_are_not_retried_per_request(
    oidc_issuer: OIDCIssuer, backend_of: BackendFactory
) -> None:
    backend = await backend_of(
        jwks_cache_ttl=0.1, jwks_min_refetch_interval=30, bearer_cache_ttl=0, timeout=0.3
    )
    token = oidc_issuer.mint(oidc_issuer.claims("alice"))
    assert await backend.authenticate_bearer(token) is not None
    await oidc_issuer.stop()
    # The provider's port now accepts connections and never answers: every
    # refresh attempt costs the whole timeout.
    with socket.socket() as silent:
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind(("127.0.0.1", oidc_issuer.port))
        silent.listen(64)
        await asyncio.sleep(0.15)
        started = time.monotonic()
        results = await asyncio.gather(*(backend.authenticate_bearer(token) for _ in range(20)))
        assert all(identity_of(result) == ("alice", set()) for result in results)
        # One timed-out refresh, not twenty.
        assert time.monotonic() - started < 1.5


async def test_an_oversized_provider_answer_is_unavailable(
    oidc_issuer: OIDCIssuer, aiohttp_server: Any
) -> None:
    from aiohttp import web

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"{" + b" " * (2 << 20) + b"}", content_type="application/json")

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", huge)
    server = await aiohttp_server(app)
    backend = oidc_config(
        oidc_issuer, discovery_url=str(server.make_url("/.well-known/openid-configuration"))
    ).build()
    try:
        with pytest.raises(BackendUnavailableError, match="larger than"):
            await backend.login({"code": "c"})
    finally:
        await backend.shutdown()
