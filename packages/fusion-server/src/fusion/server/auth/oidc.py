"""OpenID Connect authentication backend (pyjwt against the provider's JWKS)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import quote_plus

import aiohttp
import jwt
import msgspec

from fusion.concept import AuthInfo, Identity
from fusion.helper.config import TLSConfig
from fusion.server.auth.backend import (
    BackendUnavailableError,
    BearerGrant,
    FusionAuthBackend,
    FusionAuthBackendConfig,
    LoginBodyError,
)

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "KeycloakBackend",
    "KeycloakBackendConfig",
    "OIDCBackend",
    "OIDCBackendConfig",
]

_LOGGER = logging.getLogger(__name__)

# Signature algorithms whose verification key is public. HMAC (HS*) would let
# anyone holding the JWKS (public) forge tokens; "none" is no signature.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_KEY_TYPE_OF = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_MAX_PROVIDER_BODY = 1 << 20
_CURVE_OF = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class OIDCBackendConfig(FusionAuthBackendConfig, tag="oidc", kw_only=True):
    """``type: oidc``: authorization-code login and Bearer tokens."""

    issuer: str
    """The provider's issuer URL (``iss`` of its tokens)."""
    client_id: str
    client_secret: str | None = None
    redirect_uri: str
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "profile", "email"])
    discovery_url: str | None = None
    """Defaults to ``<issuer>/.well-known/openid-configuration``."""
    client_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    """How the client authenticates at the token endpoint."""
    identity_source: Literal["id_token", "access_token"] = "id_token"
    """Which token of the code exchange gives the identity."""
    audience: list[str] = msgspec.field(default_factory=list)
    """Accepted ``aud`` values (the client id when empty)."""
    accept_azp: bool = False
    """Also accept a token whose ``azp`` (authorized party) is ``client_id`` when
    its ``aud`` names none of ``audience``: Keycloak's access tokens name the
    client that asked for them in ``azp`` and carry it in ``aud`` only with an
    audience mapper. A token neither for nor obtained by this client is still
    refused."""
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    """Asymmetric algorithms only: ``none`` and HS* are refused."""
    leeway: float = 30.0
    """Clock skew tolerated on exp, nbf and iat (seconds)."""
    required_claims: list[str] = msgspec.field(default_factory=lambda: ["exp", "iat", "sub"])
    username_claim: str = "preferred_username"
    """Claim giving the username; dotted paths reach nested claims."""
    groups_claim: str | None = "groups"
    """Claim giving the groups (a list or a string), e.g. ``realm_access.roles``."""
    allowed_groups: list[str] = msgspec.field(default_factory=list)
    """When not empty, only members of one of these groups may log in."""
    timeout: float = 10.0
    """HTTP timeout towards the provider (seconds)."""
    tls: TLSConfig = msgspec.field(default_factory=TLSConfig)
    """How the provider's certificate is checked: the shared TLS shape
    (``verify``, ``ca_file``, ``ca_path``, ``ca_data``, ``fingerprint``,
    ``cert_file``/``key_file``)."""
    ca_file: str | None = None
    """Earlier spelling of ``tls.ca_file`` (folded into ``tls``)."""
    tls_verify: bool | None = None
    """Earlier spelling of ``tls.verify`` (folded into ``tls``)."""
    jwks_cache_ttl: float = 3600.0
    """Keys are refetched after this long even without an unknown ``kid``."""
    jwks_min_refetch_interval: float = 10.0
    """An unknown ``kid`` refetches the JWKS at most this often (seconds)."""
    bearer_cache_size: int = 1024
    bearer_cache_ttl: float = 60.0
    """Validated Bearer tokens are remembered this long (never past their exp)."""

    def __post_init__(self) -> None:
        # Raised at decode time, so the config loader names the bad key.
        if self.ca_file is not None or self.tls_verify is not None:
            if self.tls != TLSConfig():
                raise ValueError(
                    "ca_file and tls_verify are the old spelling of tls: give only tls"
                )
            verify = self.tls_verify is not False
            self.tls = TLSConfig(verify=verify, ca_file=self.ca_file if verify else None)
            self.ca_file = self.tls_verify = None
        if not self.issuer.startswith(("https://", "http://")):
            raise ValueError("issuer must be an http(s) URL")
        if not self.algorithms:
            raise ValueError("algorithms must not be empty")
        refused = [name for name in self.algorithms if name not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise ValueError(
                f"algorithms {refused} refused: only asymmetric signatures "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}), never none or HS*"
            )
        if not self.username_claim:
            raise ValueError("username_claim must not be empty")
        if self.leeway < 0 or self.leeway > 600:
            raise ValueError("leeway must be between 0 and 600 seconds")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.bearer_cache_size < 0 or self.bearer_cache_ttl < 0:
            raise ValueError("bearer_cache_size and bearer_cache_ttl must not be negative")
        if self.jwks_min_refetch_interval < 0 or self.jwks_cache_ttl <= 0:
            raise ValueError("jwks_cache_ttl must be positive, jwks_min_refetch_interval >= 0")

    def build(self) -> OIDCBackend:
        return OIDCBackend(self)


class KeycloakBackendConfig(OIDCBackendConfig, tag="keycloak", kw_only=True):
    """``type: keycloak``: the OIDC backend on one Keycloak realm, whose
    ``GET /api/auth/config`` answers what the older servers' web front-ends
    read to send the browser to Keycloak's login page.

    The issuer is ``<host>/realms/<realm>``, as Keycloak lays out a realm (its
    discovery document at ``<issuer>/.well-known/openid-configuration``);
    discovery, the code exchange and token validation are the OIDC backend's,
    and every ``oidc`` option applies. The defaults follow the older
    framework: the user is read from the access token (``preferred_username``
    and the ``groups`` claim of Keycloak's group membership mapper), whose
    ``azp`` names this client.
    """

    host: str
    """Keycloak's base URL, before ``/realms``: ``https://sso.example.org``, or
    ``https://sso.example.org/auth`` for a Keycloak serving under ``/auth``
    (before version 17, or run with ``--http-relative-path=/auth``)."""
    realm: Annotated[str, msgspec.Meta(pattern=r"^[^/?#%\s]+$")]
    """The realm's name, as in its URLs."""
    issuer: str = ""
    """Derived from ``host`` and ``realm``: leave it out."""
    identity_source: Literal["id_token", "access_token"] = "access_token"
    """The older framework read the user from the access token."""
    accept_azp: bool = True
    """Keycloak's access tokens name this client in ``azp`` (``aud`` needs an
    audience mapper)."""

    def __post_init__(self) -> None:
        if not self.host.startswith(("https://", "http://")):
            raise ValueError("host must be an http(s) URL")
        issuer = f"{self.host.rstrip('/')}/realms/{self.realm}"
        if self.issuer and self.issuer != issuer:
            raise ValueError(f"issuer is derived from host and realm ({issuer}): leave it out")
        self.issuer = issuer
        super().__post_init__()

    def build(self) -> KeycloakBackend:
        return KeycloakBackend(self)


class _ProviderMetadata(msgspec.Struct, kw_only=True):
    issuer: str
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    jwks_uri: str
    end_session_endpoint: str | None = None


_METADATA_DECODER = msgspec.json.Decoder(_ProviderMetadata)


class _TokenResponse(msgspec.Struct):
    access_token: str | None = None
    id_token: str | None = None


_TOKEN_RESPONSE_DECODER = msgspec.json.Decoder(_TokenResponse)


class _JWKS(msgspec.Struct):
    keys: list[dict[str, Any]]


_JWKS_DECODER = msgspec.json.Decoder(_JWKS)


class _Key(NamedTuple):
    jwk: jwt.PyJWK
    # "alg" and "crv" as the JWKS declares them (None when absent)
    alg: str | None
    curve: str | None


class _Refused(Exception):
    """A token that does not validate: the reason is logged, the caller gets None."""


class OIDCBackend(FusionAuthBackend):
    """Validates the provider's tokens; logs in with the authorization code.

    Discovery and the JWKS are fetched at startup when the provider answers
    (later otherwise) and kept; keys are refetched after ``jwks_cache_ttl``,
    or sooner when a token names an unknown ``kid`` (at most once per
    ``jwks_min_refetch_interval``), so the provider can rotate keys.
    """

    type = "oidc"

    def __init__(self, config: OIDCBackendConfig) -> None:
        self.config = config
        self._audience = config.audience or [config.client_id]
        self._session: aiohttp.ClientSession | None = None
        self._metadata: _ProviderMetadata | None = None
        self._keys: dict[str | None, _Key] = {}
        self._keys_fetched_at = -float("inf")
        self._last_refetch = -float("inf")
        self._lock = asyncio.Lock()
        self._last_failure: tuple[float, BackendUnavailableError] | None = None
        # sha256(token) -> (identity, monotonic deadline)
        # digest -> (what the token grants, monotonic deadline of the cache entry)
        self._bearer_cache: OrderedDict[bytes, tuple[BearerGrant, float]] = OrderedDict()

    # -- lifecycle --------------------------------------------------------------------

    async def startup(self) -> None:
        self._client_session()
        try:
            await self._ensure_keys()
        except BackendUnavailableError as error:
            # The server still starts: logins answer 503 until the provider is back.
            _LOGGER.warning("%s (will retry on the next login)", error)

    async def shutdown(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def ready(self) -> None:
        """Discovery and the JWKS fetched: cached as for tokens (``jwks_cache_ttl``),
        so probes do not call the provider each time, and stale keys still count."""
        await self._ensure_keys()

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            config = self.config
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=config.timeout),
                connector=aiohttp.TCPConnector(ssl=config.tls.aiohttp_ssl("tls")),
                raise_for_status=False,
            )
        return self._session

    # -- FusionAuthBackend ------------------------------------------------------------

    def login_username(self, data: dict[str, Any]) -> str | None:
        # The code names nobody before the exchange: throttle per address only.
        return None

    async def login(self, data: dict[str, Any]) -> Identity | None:
        code = data.get("code")
        verifier = data.get("code_verifier")
        nonce = data.get("nonce")
        if not isinstance(code, str) or not code:
            raise LoginBodyError('oidc login needs {"code": str, "code_verifier"?: str}')
        if verifier is not None and (not isinstance(verifier, str) or not verifier):
            raise LoginBodyError("code_verifier must be a non-empty string")
        if nonce is not None and not isinstance(nonce, str):
            raise LoginBodyError("nonce must be a string")
        tokens = await self._exchange_code(code, verifier)
        if tokens is None:
            return None
        token = (
            tokens.id_token if self.config.identity_source == "id_token" else tokens.access_token
        )
        if not token:
            _LOGGER.warning("OIDC token endpoint answered without %s", self.config.identity_source)
            return None
        try:
            claims = await self._validate(token)
            if nonce is not None and claims.get("nonce") != nonce:
                raise _Refused("nonce mismatch")
            return self._identity(claims)
        except _Refused as refused:
            _LOGGER.info("OIDC login refused: %s", refused)
            return None

    async def authenticate_bearer(self, token: str) -> BearerGrant | None:
        digest = hashlib.sha256(token.encode(errors="surrogateescape")).digest()
        cached = self._bearer_cache.get(digest)
        now = time.monotonic()
        if cached is not None:
            grant, deadline = cached
            if now < deadline:
                self._bearer_cache.move_to_end(digest)
                return grant
            del self._bearer_cache[digest]
        try:
            claims = await self._validate(token)
            identity = self._identity(claims)
        except _Refused as refused:
            _LOGGER.info("Bearer token refused: %s", refused)
            return None
        exp = claims.get("exp")
        # Valid until exp plus the leeway the validation grants: an event stream
        # opened with the token ends then.
        expires = float(exp) + self.config.leeway if isinstance(exp, int | float) else None
        grant = BearerGrant(identity, expires)
        self._remember(digest, grant, claims)
        return grant

    def info(self) -> AuthInfo:
        config = self.config
        metadata = self._metadata
        return AuthInfo(
            type=self.type,
            parameters={
                "issuer": config.issuer,
                "authorization_endpoint": metadata.authorization_endpoint if metadata else None,
                "end_session_endpoint": metadata.end_session_endpoint if metadata else None,
                "client_id": config.client_id,
                "redirect_uri": config.redirect_uri,
                "scopes": list(config.scopes),
            },
        )

    # -- bearer cache -----------------------------------------------------------------

    def _remember(self, digest: bytes, grant: BearerGrant, claims: dict[str, Any]) -> None:
        size = self.config.bearer_cache_size
        if size == 0 or self.config.bearer_cache_ttl == 0:
            return
        lifetime = self.config.bearer_cache_ttl
        expires = claims.get("exp")
        if isinstance(expires, int | float):
            # Never trust a cached token past its own expiry.
            lifetime = min(lifetime, float(expires) - time.time())
        if lifetime <= 0:
            return
        self._bearer_cache[digest] = (grant, time.monotonic() + lifetime)
        self._bearer_cache.move_to_end(digest)
        while len(self._bearer_cache) > size:
            self._bearer_cache.popitem(last=False)

    # -- provider ---------------------------------------------------------------------

    def _unavailable(self, what: str, error: object) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"OIDC provider {self.config.issuer} unreachable ({what}): {error}"
        )

    async def _get_json(self, url: str, what: str) -> bytes:
        try:
            async with self._client_session().get(url) as response:
                body = await _read_bounded(response)
                if response.status != 200:
                    raise self._unavailable(what, f"HTTP {response.status}")
                return body
        except (aiohttp.ClientError, TimeoutError) as error:
            raise self._unavailable(what, error or type(error).__name__) from None

    async def _ensure_metadata(self) -> _ProviderMetadata:
        if self._metadata is not None:
            return self._metadata
        config = self.config
        url = config.discovery_url or (
            config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        )
        body = await self._get_json(url, "discovery")
        try:
            metadata = _METADATA_DECODER.decode(body)
        except (msgspec.DecodeError, RecursionError) as error:
            raise self._unavailable("discovery", f"invalid document: {error}") from None
        if metadata.issuer != config.issuer:
            # OpenID Connect Discovery 1.0, section 4.3: they must be identical.
            raise self._unavailable("discovery", f"the document names issuer {metadata.issuer!r}")
        self._metadata = metadata
        return metadata

    async def _fetch_keys(self) -> None:
        metadata = await self._ensure_metadata()
        body = await self._get_json(metadata.jwks_uri, "jwks")
        try:
            document = _JWKS_DECODER.decode(body)
        except (msgspec.DecodeError, RecursionError) as error:
            raise self._unavailable("jwks", f"invalid document: {error}") from None
        keys: dict[str | None, _Key] = {}
        for entry in document.keys:
            # Only public signature keys: a symmetric ("oct") key in a JWKS
            # would be an HMAC secret that everybody can read.
            if entry.get("kty") not in ("RSA", "EC", "OKP") or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
            alg, curve = entry.get("alg"), entry.get("crv")
            keys[key.key_id] = _Key(
                key,
                alg if isinstance(alg, str) else None,
                curve if isinstance(curve, str) else None,
            )
        self._keys = keys
        self._keys_fetched_at = time.monotonic()

    async def _ensure_keys(self) -> None:
        config = self.config
        if time.monotonic() - self._keys_fetched_at < config.jwks_cache_ttl:
            return
        arrived = time.monotonic()
        async with self._lock:
            if time.monotonic() - self._keys_fetched_at < config.jwks_cache_ttl:
                return
            failure = self._last_failure
            if failure is not None and failure[0] >= arrived:
                # The provider failed while this request queued for the lock:
                # answer with that failure rather than wait for another timeout.
                raise failure[1]
            try:
                await self._fetch_keys()
                self._last_failure = None
            except BackendUnavailableError as error:
                self._last_failure = (time.monotonic(), error)
                if not self._keys:
                    raise
                # Stale keys still validate tokens while the provider is away;
                # retry the refresh after the refetch interval, not per request.
                self._keys_fetched_at = (
                    time.monotonic() - config.jwks_cache_ttl + config.jwks_min_refetch_interval
                )
                _LOGGER.warning("%s: keeping the previous keys", error)

    async def _key_for(self, kid: str | None, alg: str) -> _Key:
        await self._ensure_keys()
        key = self._pick(kid, alg)
        if key is None and time.monotonic() - self._last_refetch >= (
            self.config.jwks_min_refetch_interval
        ):
            async with self._lock:
                key = self._pick(kid, alg)
                if key is None and time.monotonic() - self._last_refetch >= (
                    self.config.jwks_min_refetch_interval
                ):
                    self._last_refetch = time.monotonic()
                    await self._fetch_keys()
                    key = self._pick(kid, alg)
        if key is None:
            raise _Refused(f"no key {kid!r} for {alg} in the provider's JWKS")
        return key

    def _pick(self, kid: str | None, alg: str) -> _Key | None:
        if kid is None:
            # A provider with one key may omit kid; several keys would be a guess.
            usable = [key for key in self._keys.values() if _fits(key, alg)]
            return usable[0] if len(usable) == 1 else None
        key = self._keys.get(kid)
        return key if key is not None and _fits(key, alg) else None

    async def _exchange_code(self, code: str, verifier: str | None) -> _TokenResponse | None:
        metadata = await self._ensure_metadata()
        if not metadata.token_endpoint:
            raise self._unavailable("token", "the provider has no token_endpoint")
        config = self.config
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": config.redirect_uri,
            "client_id": config.client_id,
        }
        if verifier is not None:
            form["code_verifier"] = verifier
        headers = {"Accept": "application/json"}
        if config.client_secret is not None:
            if config.client_auth_method == "client_secret_basic":
                # RFC 6749 section 2.3.1: each part form-urlencoded, then Basic.
                pair = f"{quote_plus(config.client_id)}:{quote_plus(config.client_secret)}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            else:
                form["client_secret"] = config.client_secret
        try:
            async with self._client_session().post(
                metadata.token_endpoint,
                data=form,
                headers=headers,
            ) as response:
                body = await _read_bounded(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise self._unavailable("token", error or type(error).__name__) from None
        if status >= 500:
            raise self._unavailable("token", f"HTTP {status}")
        if status == 401:
            # No user can cause this: the server's client_id/client_secret are wrong.
            raise BackendUnavailableError(
                f"OIDC provider {config.issuer} refused the client credentials "
                f"of {config.client_id!r} (invalid_client)"
            )
        if status != 200:
            # invalid_grant (bad, used or expired code, PKCE mismatch) or
            # invalid_client: the login is refused.
            _LOGGER.info("OIDC code exchange refused: HTTP %s %s", status, body[:200])
            return None
        try:
            return _TOKEN_RESPONSE_DECODER.decode(body)
        except (msgspec.DecodeError, RecursionError) as error:
            raise self._unavailable("token", f"invalid answer: {error}") from None

    # -- validation -------------------------------------------------------------------

    async def _validate(self, token: str) -> dict[str, Any]:
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as error:
            raise _Refused(f"malformed token: {error}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in config.algorithms:
            raise _Refused(f"algorithm {alg!r} not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _Refused("kid is not a string")
        key = await self._key_for(kid, alg)
        # With accept_azp, aud may be absent or name another service: checked below.
        required = sorted(
            {*config.required_claims, "exp", "iss", *(() if config.accept_azp else ("aud",))}
        )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.jwk.key,
                algorithms=[alg],
                audience=None if config.accept_azp else self._audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={
                    "require": required,
                    "verify_signature": True,
                    "verify_aud": not config.accept_azp,
                },
            )
        except jwt.InvalidTokenError as error:
            raise _Refused(str(error)) from None
        if config.accept_azp:
            self._check_audience_or_azp(claims)
        issued = claims.get("iat")
        if issued is not None and (
            not isinstance(issued, int | float) or issued > time.time() + config.leeway
        ):
            raise _Refused("iat is in the future")
        return claims

    def _check_audience_or_azp(self, claims: dict[str, Any]) -> None:
        """For accept_azp: one of ``audience`` in ``aud``, or ``azp`` is the client id."""
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if any(name in self._audience for name in audiences if isinstance(name, str)):
            return
        if claims.get("azp") == self.config.client_id:
            return
        raise _Refused(f"token for another client (aud {aud!r}, azp {claims.get('azp')!r})")

    def _identity(self, claims: dict[str, Any]) -> Identity:
        config = self.config
        username = _claim(claims, config.username_claim)
        if not isinstance(username, str) or not username:
            raise _Refused(f"claim {config.username_claim!r} missing or not a string")
        groups: set[str] = set()
        if config.groups_claim:
            value = _claim(claims, config.groups_claim)
            if isinstance(value, str):
                groups = {value}
            elif isinstance(value, list):
                groups = {item for item in value if isinstance(item, str) and item}
        if config.allowed_groups and not groups.intersection(config.allowed_groups):
            raise _Refused(f"{username} is in none of the allowed groups")
        return Identity(username=username, groups=frozenset(groups))


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The body, refused past _MAX_PROVIDER_BODY: provider documents are small."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > _MAX_PROVIDER_BODY:
            raise aiohttp.ClientPayloadError(f"answer larger than {_MAX_PROVIDER_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _fits(key: _Key, alg: str) -> bool:
    """True when ``key`` may verify ``alg`` (an RSA key never verifies ES256...)."""
    if key.jwk.key_type != _KEY_TYPE_OF.get(alg[:2]):
        return False
    if key.alg is not None and key.alg != alg:
        return False
    curve = _CURVE_OF.get(alg)
    return curve is None or key.curve == curve


def _claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by dotted path: ``realm_access.roles``; a literal dotted key wins."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class KeycloakBackend(OIDCBackend):
    """The OIDC backend on a Keycloak realm; its auth config is the older
    servers' ``keycloak`` one (``host``, ``realm``, ``client``, ``redirect_uri``)."""

    type = "keycloak"

    def __init__(self, config: KeycloakBackendConfig) -> None:
        super().__init__(config)
        self.keycloak = config

    def info(self) -> AuthInfo:
        config = self.keycloak
        # The front-ends send the browser to
        # <host>/realms/<realm>/protocol/openid-connect/auth?client_id=<client>&...
        # (they strip one trailing slash; the older servers sent one).
        return AuthInfo(
            type=self.type,
            parameters={
                "host": config.host.rstrip("/") + "/",
                "realm": config.realm,
                "client": config.client_id,
                "redirect_uri": config.redirect_uri,
            },
        )
