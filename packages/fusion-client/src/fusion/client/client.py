"""FusionClient: one aiohttp session to one Fusion service."""

from __future__ import annotations

import base64
import json as _stdlib_json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, overload

import aiohttp
import msgspec
from yarl import URL

from fusion.client.__about__ import __version__
from fusion.client.config import FusionClientConfig
from fusion.client.errors import FusionAPIError, FusionConnectionError
from fusion.helper.config import load_ssl_config

if TYPE_CHECKING:
    # Imported where used: `import fusion.client` stays light (tools/bench/client_import.py).
    from fusion.client.cookies import FusionCookieJar
    from fusion.client.progress import TransferProgressCallback

__all__ = ["USER_AGENT", "FusionClient", "QueryParams", "QueryValue", "query_pairs"]

_LOGGER = logging.getLogger("fusion.client")

USER_AGENT = f"fusion-client/{__version__}"
API_TOKEN_HEADER = "X-Fusion-API-Token"  # noqa: S105 (a header name)

T = TypeVar("T")

QueryValue = str | int | float | bool
QueryParams = Mapping[str, QueryValue | Sequence[QueryValue]] | Sequence[tuple[str, QueryValue]]
"""Query parameters: a mapping (a sequence value repeats the key) or ``(key, value)`` pairs."""

# Redirects a stream follows, each hop with the credentials its own URL may have.
_MAX_REDIRECTS = 10
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def _query_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TypeError(f"a query value must be str, int, float or bool, not {type(value).__name__}")


def query_pairs(params: QueryParams) -> list[tuple[str, str]]:
    """``params`` as ``(key, text)`` pairs: booleans as ``true``/``false``, lists repeated."""
    items = params.items() if isinstance(params, Mapping) else params
    pairs: list[tuple[str, str]] = []
    for key, value in items:
        if isinstance(value, (list, tuple)):
            pairs.extend((key, _query_text(item)) for item in value)
        else:
            pairs.append((key, _query_text(value)))
    return pairs


class _Envelope(msgspec.Struct, Generic[T]):
    # Unknown keys are ignored by msgspec, so servers may add to the envelope.
    status: int = 0
    data: T | None = None
    count: int | None = None
    message: str | None = None


class _ErrorEnvelope(msgspec.Struct):
    message: str | None = None


_ENCODER = msgspec.json.Encoder()
_ERROR_DECODER = msgspec.json.Decoder(_ErrorEnvelope)
_ENVELOPE_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def _envelope_decoder(data_type: Any) -> msgspec.json.Decoder[Any]:
    try:
        return _ENVELOPE_DECODERS[data_type]
    except KeyError:
        decoder = _ENVELOPE_DECODERS[data_type] = msgspec.json.Decoder(_Envelope[data_type])
        return decoder


# Errors that mean "the server could not be talked to", as opposed to an answer.
_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)


def connection_error(exc: BaseException, url: URL | str) -> FusionConnectionError:
    """A one-line FusionConnectionError describing ``exc``."""
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        reason = "server certificate does not match the pinned fingerprint"
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = f"server certificate refused: {exc.certificate_error}"
    elif isinstance(exc, aiohttp.ClientSSLError):
        reason = f"TLS error: {exc}"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        reason = f"cannot connect: {exc.strerror or exc}"
    elif isinstance(exc, TimeoutError):
        reason = "timed out"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        reason = "server closed the connection"
    else:
        reason = str(exc) or type(exc).__name__
    return FusionConnectionError(f"{url}: {reason}")


def error_message(status: int, body: bytes, reason: str | None) -> str:
    """The server's reason for an error answer: envelope message, plain text, or HTTP reason."""
    try:
        message = _ERROR_DECODER.decode(body).message
    except (msgspec.DecodeError, RecursionError):
        # Older servers answer some 401/403 as plain text; keep a short first line.
        text = body.decode("utf-8", errors="replace").strip()
        message = text.splitlines()[0][:200] if text else None
    return message or reason or f"HTTP {status}"


class FusionClient:
    """One ``aiohttp.ClientSession`` to one Fusion service.

    Use it as an async context manager, then hand it to the API classes
    (:class:`~fusion.client.FusionCaseAPIClient`, ...)::

        async with FusionClient(FusionClientConfig(api_url="https://svc:8443")) as client:
            info = await FusionInfoAPIClient(client).info()

    ``cookie_jar`` shares a session with the clients of the service's other
    replicas (a :class:`~fusion.client.FusionCookieJar`, e.g. ``other.cookie_jar``).
    A service's own routes are called with :meth:`request` and :meth:`upload`.
    """

    def __init__(
        self, config: FusionClientConfig, *, cookie_jar: FusionCookieJar | None = None
    ) -> None:
        self.config = config
        self.base_url = URL(config.api_url.rstrip("/") + "/")
        # Raises fusion.helper.config.ConfigError naming the bad setting (CA file...).
        self._ssl = load_ssl_config(config.ssl)
        self._session: aiohttp.ClientSession | None = None
        self._cookie_jar = cookie_jar
        self._cookie_file_loaded = False
        if cookie_jar is not None:
            cookie_jar.add_service_url(self.base_url)
        proxy = config.proxy
        self._proxy_kwargs: dict[str, Any] = {}
        self._proxy_headers: dict[str, str] = {}
        if proxy is not None:
            self._proxy_kwargs["proxy"] = proxy.url
            headers = dict(proxy.headers)
            if proxy.username is not None:
                # A header rather than aiohttp's proxy_auth, which newer aiohttp deprecates.
                credentials = f"{proxy.username}:{proxy.password or ''}".encode()
                headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials).decode()
            self._proxy_headers = headers

    # -- lifecycle --------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the session (and load the cookie jar file, if configured)."""
        if self._session is not None:
            return
        jar = self.cookie_jar
        if self.config.cookie_jar is not None and not self._cookie_file_loaded:
            # Once: the jar outlives a close and reopen, and is newer than the file.
            self._cookie_file_loaded = True
            self._load_cookies(jar, Path(self.config.cookie_jar))
        timeout = self.config.timeout
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT},
            cookie_jar=jar,
            trust_env=self.config.trust_env,
            timeout=aiohttp.ClientTimeout(
                total=timeout.total, connect=timeout.connect, sock_read=timeout.sock_read
            ),
        )

    async def close(self) -> None:
        """Close the session (and save the cookie jar file, if configured)."""
        if self._session is None:
            return
        session, self._session = self._session, None
        try:
            if self.config.cookie_jar is not None:
                self.save_cookies(Path(self.config.cookie_jar))
        finally:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("FusionClient is not open: use 'async with FusionClient(...)'")
        return self._session

    # -- cookies ----------------------------------------------------------
    @property
    def cookie_jar(self) -> FusionCookieJar:
        """The service's cookies (the session), kept across reopens.

        Clients of replicas of one service share a session by sharing it:
        ``FusionClient(replica_config, cookie_jar=client.cookie_jar)``.
        """
        if self._cookie_jar is None:
            from fusion.client.cookies import FusionCookieJar

            # Created on first use (in the running loop, where aiohttp wants it).
            self._cookie_jar = FusionCookieJar()
            self._cookie_jar.add_service_url(self.base_url)
        return self._cookie_jar

    def _load_cookies(self, jar: aiohttp.CookieJar, path: Path) -> None:
        try:
            stored = _stdlib_json.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            _LOGGER.warning("ignoring unreadable cookie file %s: %s", path, exc)
            return
        # A cookie file belongs to one server: never replay it to another one.
        if not isinstance(stored, dict) or stored.get("api_url") != str(self.base_url):
            return
        cookies: SimpleCookie = SimpleCookie()
        for item in stored.get("cookies", []):
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                cookies[item["name"]] = str(item.get("value", ""))
                cookies[item["name"]]["path"] = str(item.get("path") or "/")
        jar.update_cookies(cookies, response_url=self.base_url)

    def save_cookies(self, path: Path) -> None:
        """Write this server's cookies to ``path`` (mode 0600, atomically).

        With no cookie left (after a logout) the file is removed instead.
        """
        jar = self._cookie_jar
        morsels = jar.filter_cookies(self.base_url).values() if jar is not None else []
        cookies = [
            {"name": morsel.key, "value": morsel.value, "path": morsel["path"] or "/"}
            for morsel in morsels
        ]
        if not cookies:
            path.unlink(missing_ok=True)
            return
        payload = _stdlib_json.dumps({"api_url": str(self.base_url), "cookies": cookies})
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".cookies-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as tmp:
                tmp.write(payload)
            os.chmod(tmp_name, 0o600)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def clear_cookies(self) -> None:
        """Forget every cookie (the session)."""
        if self._cookie_jar is not None:
            self._cookie_jar.clear()

    # -- requests ---------------------------------------------------------
    def url(self, path: str) -> URL:
        """Absolute URL of an API path (``/api/...``) under the base URL."""
        return self.base_url.join(URL(path.lstrip("/")))

    def is_own_url(self, url: URL | str) -> bool:
        """Whether ``url`` is under this client's base URL (scheme, host, port, path prefix).

        Only such URLs get the API key.
        """
        target = url if isinstance(url, URL) else URL(url)
        base = self.base_url
        return (
            target.scheme == base.scheme
            and (target.host or "").lower() == (base.host or "").lower()
            and target.port == base.port
            and (target.path.rstrip("/") + "/").startswith(base.path)
        )

    def _request_kwargs(
        self, url: URL, extra: Mapping[str, str] | None, with_api_key: bool
    ) -> dict[str, Any]:
        headers: dict[str, str] = {}
        # The key goes to this client's own server only, never to another host.
        if with_api_key and self.config.api_key and self.is_own_url(url):
            headers[API_TOKEN_HEADER] = self.config.api_key
        if extra:
            headers.update(extra)
        kwargs: dict[str, Any] = {"headers": headers, "ssl": self._ssl, **self._proxy_kwargs}
        if self._proxy_headers:
            # https goes through a CONNECT tunnel: proxy headers belong on the CONNECT,
            # never inside the tunnel. Plain http talks to the proxy itself.
            if url.scheme == "https":
                kwargs["proxy_headers"] = self._proxy_headers
            else:
                headers.update(self._proxy_headers)
        return kwargs

    @asynccontextmanager
    async def _open(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str] | None,
        with_api_key: bool,
        data: Any = None,
        params: QueryParams | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The final response of ``method url``, redirects followed here, hop by hop.

        Each hop carries only the credentials its own URL may have: the API
        key (``with_api_key``) under this client's base URL, the session
        cookie to the service's hosts (:class:`~fusion.client.FusionCookieJar`),
        nothing to another host. A 303, or a 301/302 after anything but GET
        and HEAD, goes on as a GET without the body (as aiohttp and browsers
        do). Connection failures raise :class:`FusionConnectionError`.
        """
        target = url
        extra: dict[str, Any] = {"data": data}
        if params is not None:
            extra["params"] = query_pairs(params)
        if client_timeout is not None:
            extra["timeout"] = client_timeout
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                async with self.session.request(
                    method,
                    target,
                    allow_redirects=False,
                    **extra,
                    **self._request_kwargs(target, headers, with_api_key),
                ) as response:
                    location = response.headers.get("Location")
                    if response.status in _REDIRECT_STATUSES and location:
                        target = response.url.join(URL(location))
                        extra.pop("params", None)  # the Location has its own query
                        if response.status == 303 or (
                            response.status in (301, 302) and method not in ("GET", "HEAD")
                        ):
                            method, extra["data"] = "GET", None
                            headers = {
                                key: value
                                for key, value in (headers or {}).items()
                                if key.lower() != "content-type"
                            }
                        continue
                    yield response
                    return
        except _CONNECTION_ERRORS as exc:
            raise connection_error(exc, target) from exc
        raise FusionConnectionError(f"{url}: more than {_MAX_REDIRECTS} redirects")

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: URL | str,
        *,
        headers: Mapping[str, str] | None = None,
        with_api_key: bool = True,
        sock_read: float | bool | None = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a streamed response (downloads, events), without the total timeout.

        Answers >= 400 raise :class:`FusionAPIError`; connection failures
        raise :class:`FusionConnectionError`. ``sock_read=True`` keeps the
        configured read timeout; a number or ``None`` replaces it. Redirects
        are followed with the credentials each URL may have (the API key,
        with ``with_api_key``, only under the base URL; see :meth:`is_own_url`).
        """
        target = url if isinstance(url, URL) else URL(url)
        timeout = self.config.timeout
        read = timeout.sock_read if sock_read is True else sock_read
        client_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout.connect, sock_read=read or None
        )
        async with self._open(
            method,
            target,
            headers=headers,
            with_api_key=with_api_key,
            client_timeout=client_timeout,
        ) as response:
            if response.status >= 400:
                body = await response.read()
                raise FusionAPIError(
                    response.status, error_message(response.status, body, response.reason)
                )
            yield response

    @overload
    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        concept_type: type[T],
        params: QueryParams | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> T: ...

    @overload
    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        concept_type: None = None,
        params: QueryParams | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any: ...

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        concept_type: Any = None,
        params: QueryParams | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Call ``method path`` and return the envelope's ``data``.

        This is the call for a service's own routes too. With ``concept_type``
        the data is validated into that type straight from the response bytes
        (a Concept subclass, or ``list[Sample]``...); fields the type does not
        know are ignored, a missing or mistyped one is a :class:`FusionAPIError`.
        Without it, the data comes back as builtins (``None`` when absent).
        ``json`` (a Concept, a dict, ...) is sent as the JSON body; ``params``
        as the query string (see :data:`QueryParams`; booleans are sent as
        ``true``/``false``). Answers >= 400 raise :class:`FusionAPIError`
        with the server's status and message.
        """
        body: bytes | None = None
        if json is not None:
            body = _ENCODER.encode(json)
            headers = {**(headers or {}), "Content-Type": "application/json"}
        return await self._call(method, path, body, concept_type, params, headers)

    @overload
    async def upload(
        self,
        path: str,
        file: Path | str,
        *,
        concept_type: type[T],
        fields: msgspec.Struct | Mapping[str, Any] | None = None,
        field: str = "file",
        filename: str | None = None,
        content_type: str | None = None,
        method: str = "POST",
        params: QueryParams | None = None,
        headers: Mapping[str, str] | None = None,
        on_progress: TransferProgressCallback | None = None,
    ) -> T: ...

    @overload
    async def upload(
        self,
        path: str,
        file: Path | str,
        *,
        concept_type: None = None,
        fields: msgspec.Struct | Mapping[str, Any] | None = None,
        field: str = "file",
        filename: str | None = None,
        content_type: str | None = None,
        method: str = "POST",
        params: QueryParams | None = None,
        headers: Mapping[str, str] | None = None,
        on_progress: TransferProgressCallback | None = None,
    ) -> Any: ...

    async def upload(
        self,
        path: str,
        file: Path | str,
        *,
        concept_type: Any = None,
        fields: msgspec.Struct | Mapping[str, Any] | None = None,
        field: str = "file",
        filename: str | None = None,
        content_type: str | None = None,
        method: str = "POST",
        params: QueryParams | None = None,
        headers: Mapping[str, str] | None = None,
        on_progress: TransferProgressCallback | None = None,
    ) -> Any:
        """Send ``file`` as a ``multipart/form-data`` upload and return the answer's data.

        The file is streamed from disk in chunks (never read whole into
        memory) as the part ``field``, named ``filename`` (default: the
        file's own name) with ``content_type`` (default: guessed from the
        name); its size, taken when the upload starts, is announced in the
        body's ``Content-Length``. ``fields`` go first, as text parts: a
        ``msgspec.Struct`` (or a mapping) encoded as the server's
        ``receive_upload(fields=Type)`` reads them (see
        :func:`~fusion.client.upload.form_fields`). ``on_progress`` gets a
        :class:`~fusion.client.TransferProgress` of the file's bytes as they
        are sent. The answer is decoded as by :meth:`request` (413 and the
        other refusals raise :class:`FusionAPIError`).
        """
        from fusion.client.upload import multipart_body

        body = await multipart_body(
            Path(file),
            field=field,
            filename=filename,
            content_type=content_type,
            fields=fields,
            on_progress=on_progress,
        )
        return await self._call(method, path, body, concept_type, params, headers)

    async def _call(
        self,
        method: str,
        path: str,
        body: Any,
        concept_type: Any,
        params: QueryParams | None,
        headers: Mapping[str, str] | None,
    ) -> Any:
        url = self.url(path)
        async with self._open(
            method, url, headers=headers, with_api_key=True, data=body, params=params
        ) as response:
            raw = await response.read()  # a failure here is a FusionConnectionError too
            status = response.status
            reason = response.reason
        if status >= 400:
            raise FusionAPIError(status, error_message(status, raw, reason))
        try:
            envelope = _envelope_decoder(concept_type or Any).decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise FusionAPIError(status, f"invalid response from {method} {path}: {exc}") from exc
        if concept_type is not None and envelope.data is None:
            raise FusionAPIError(status, f"invalid response from {method} {path}: no data")
        return envelope.data
