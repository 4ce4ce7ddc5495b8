"""A small OpenID Connect provider on loopback, for tests and benchmarks.

It serves discovery, a JWKS with RSA and EC keys that can rotate, and a token
endpoint for the authorization-code flow (codes it issued, client
authentication, redirect URI and PKCE checks). With ``realm`` it is laid out
as a Keycloak realm: everything under ``<base_path>/realms/<realm>/`` (the
discovery document, ``protocol/openid-connect/{auth,token,certs}``), and its
access tokens are shaped like Keycloak's (``aud: account``, the client in
``azp``). ``mint`` signs arbitrary
claims with any key, and ``forge`` builds the tokens a provider never issues
(``alg: none``, HS256 keyed with the public key), for refusal tests.

It does not import pytest.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["IssuedCode", "OIDCIssuer", "SigningKey", "pkce_pair"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@functools.cache
def _rsa_key(index: int) -> rsa.RSAPrivateKey:
    # Cached per process: an RSA key takes tens of milliseconds to generate.
    del index
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _ec_key(index: int) -> ec.EllipticCurvePrivateKey:
    del index
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class SigningKey:
    """A key of the issuer: its ``kid``, algorithm and private key."""

    kid: str
    alg: str
    private_key: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(public))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass
class IssuedCode:
    """What the provider remembers about an authorization code."""

    claims: dict[str, Any]
    redirect_uri: str
    code_challenge: str | None
    # Returned verbatim instead of a freshly signed ID token (forgery tests).
    id_token: str | None = None
    used: bool = False
    expires: float = field(default_factory=lambda: time.time() + 60)


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, _s256(verifier)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OIDCIssuer:
    """The provider. ``await start()`` / ``await stop()``; ``issuer`` is its URL."""

    def __init__(
        self,
        *,
        client_id: str = "fusion",
        client_secret: str | None = None,
        redirect_uri: str = "http://127.0.0.1/callback",
        port: int = 0,
        realm: str | None = None,
        base_path: str = "",
    ) -> None:
        """``realm`` lays the provider out as that Keycloak realm, under
        ``base_path`` (``/auth`` for Keycloak's layout before version 17)."""
        self.realm = realm
        self.base_path = base_path.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(16)
        self.redirect_uri = redirect_uri
        self.port = port
        self.keys: list[SigningKey] = []
        self.codes: dict[str, IssuedCode] = {}
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.token_requests = 0
        self._generation = 0
        self._runner: web.AppRunner | None = None
        self.rotate("RS256")
        self.rotate("ES256", retire_previous=False)

    # -- keys and tokens ----------------------------------------------------------------

    @property
    def host(self) -> str:
        """The provider's base URL (Keycloak's ``host``: before ``/realms``)."""
        if not self.port:
            raise RuntimeError("start() the issuer first")
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    @property
    def issuer(self) -> str:
        return f"{self.host}/realms/{self.realm}" if self.realm else self.host

    @property
    def _prefix(self) -> str:
        """The issuer's path: where its routes are served."""
        return f"{self.base_path}/realms/{self.realm}" if self.realm else ""

    def _endpoint(self, name: str) -> str:
        """Path of an endpoint (``authorize``, ``token``, ``jwks``) under the issuer."""
        if self.realm:
            name = {"authorize": "auth", "jwks": "certs"}.get(name, name)
            return f"/protocol/openid-connect/{name}"
        return f"/{name}"

    def key(self, alg: str = "RS256") -> SigningKey:
        """The current (newest) key for ``alg``."""
        return next(key for key in reversed(self.keys) if key.alg == alg)

    def rotate(self, alg: str = "RS256", *, retire_previous: bool = True) -> SigningKey:
        """A new current key for ``alg``; the previous ones leave the JWKS when retired."""
        self._generation += 1
        private: PrivateKey = (
            _rsa_key(self._generation)
            if alg.startswith(("RS", "PS"))
            else (_ec_key(self._generation))
        )
        new = SigningKey(kid=f"{alg.lower()}-{self._generation}", alg=alg, private_key=private)
        if retire_previous:
            self.keys = [key for key in self.keys if key.alg != alg]
        self.keys.append(new)
        return new

    def foreign_key(self, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        """A key the provider never published (with ``kid``, e.g. a real key's kid)."""
        private: PrivateKey = _rsa_key(-1) if alg.startswith(("RS", "PS")) else _ec_key(-1)
        return SigningKey(kid=kid or f"foreign-{alg.lower()}", alg=alg, private_key=private)

    def claims(
        self, username: str = "alice", groups: list[str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Claims the provider would put in a token for ``username``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "sub": f"sub-{username}",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "preferred_username": username,
            "groups": groups if groups is not None else [],
        }
        claims.update(extra)
        return {name: value for name, value in claims.items() if value is not None}

    def mint(
        self,
        claims: dict[str, Any],
        *,
        key: SigningKey | None = None,
        alg: str | None = None,
        kid: str | None = "",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Sign ``claims`` with ``key`` (the current RS256 key by default).

        ``kid=""`` uses the key's own kid, ``kid=None`` leaves it out.
        """
        key = key or self.key("RS256")
        extra = dict(headers or {})
        if kid is not None:
            extra["kid"] = kid or key.kid
        return jwt.encode(claims, key.private_key, algorithm=alg or key.alg, headers=extra)

    def forge(self, claims: dict[str, Any], *, alg: str, secret: bytes = b"") -> str:
        """A token built by hand: ``alg: none`` or an HMAC keyed with ``secret``."""
        header = {"alg": alg, "typ": "JWT", "kid": self.key("RS256").kid}
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
        if alg == "none":
            return signing_input + "."
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        signature = hmac.new(secret, signing_input.encode(), digest).digest()
        return signing_input + "." + _b64(signature)

    def access_claims(self, claims: dict[str, Any]) -> dict[str, Any]:
        """The access token's claims for an ID token's ``claims``: with a realm,
        Keycloak's shape (``aud: account``, ``azp`` the client unless given)."""
        access = dict(claims, scope="openid profile")
        if self.realm:
            access.update(aud="account", typ="Bearer")
            access.setdefault("azp", self.client_id)
        return access

    def issue_code(
        self,
        username: str = "alice",
        groups: list[str] | None = None,
        *,
        code_challenge: str | None = None,
        redirect_uri: str | None = None,
        id_token: str | None = None,
        **extra: Any,
    ) -> str:
        """An authorization code, as the provider gives one after the user logged in.

        ``id_token`` replaces the ID token the exchange answers (forgery tests).
        """
        code = secrets.token_urlsafe(24)
        self.codes[code] = IssuedCode(
            claims=self.claims(username, groups, **extra),
            redirect_uri=redirect_uri or self.redirect_uri,
            code_challenge=code_challenge,
            id_token=id_token,
        )
        return code

    # -- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        prefix = self._prefix
        app.router.add_get(f"{prefix}/.well-known/openid-configuration", self._discovery)
        app.router.add_get(prefix + self._endpoint("jwks"), self._jwks)
        app.router.add_post(prefix + self._endpoint("token"), self._token)
        return app

    async def start(self) -> None:
        """Listen on 127.0.0.1 (the same port again after a stop)."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_requests += 1
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + self._endpoint("authorize"),
                "token_endpoint": self.issuer + self._endpoint("token"),
                "jwks_uri": self.issuer + self._endpoint("jwks"),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        return web.json_response({"keys": [key.public_jwk() for key in self.keys]})

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        client_id, client_secret = str(form.get("client_id", "")), form.get("client_secret")
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            decoded = base64.b64decode(header[6:]).decode()
            quoted_id, _, quoted_secret = decoded.partition(":")
            client_id, client_secret = unquote_plus(quoted_id), unquote_plus(quoted_secret)
        if client_id != self.client_id or client_secret != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        issued = self.codes.get(str(form.get("code", "")))
        if issued is None or issued.used or issued.expires < time.time():
            return web.json_response({"error": "invalid_grant"}, status=400)
        issued.used = True
        if form.get("redirect_uri") != issued.redirect_uri:
            return web.json_response({"error": "invalid_grant"}, status=400)
        if issued.code_challenge is not None:
            verifier = form.get("code_verifier")
            if not isinstance(verifier, str) or _s256(verifier) != issued.code_challenge:
                return web.json_response({"error": "invalid_grant"}, status=400)
        id_token = issued.id_token or self.mint(issued.claims)
        return web.json_response(
            {
                "access_token": self.mint(self.access_claims(issued.claims), key=self.key("ES256")),
                "id_token": id_token,
                "token_type": "Bearer",
                "expires_in": 300,
            }
        )
