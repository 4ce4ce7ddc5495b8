"""Reading a request: route GUIDs, JSON and Concept bodies, multipart uploads, client address.

Every body read is bounded in size and in time (:data:`BODY_TIMEOUT`); bad input
is a :class:`~fusion.helper.http_envelope.FusionHTTPError` the envelope answers.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import ipaddress
import re
import secrets
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar
from uuid import UUID

import aiohttp
import msgspec
from aiohttp.helpers import AppKey

from fusion.concept import Concept, json_decoder
from fusion.helper.filesystem import _commit_temp, _discard
from fusion.helper.http_envelope import FusionHTTPError, _BodyAbandonedError
from fusion.helper.streaming import SizeLimitError, stream_to_file

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "BODY_TIMEOUT",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_FIELD_SIZE",
    "DEFAULT_MAX_PARTS",
    "IPNetwork",
    "UploadedFile",
    "client_ip",
    "get_guid",
    "read_concept",
    "read_json",
    "stream_multipart_to_file",
]

ConceptT = TypeVar("ConceptT", bound=Concept)

DEFAULT_BODY_TIMEOUT = 30.0
BODY_TIMEOUT: AppKey[float] = AppKey("fusion_body_timeout", float)
"""Seconds a request body may take to arrive (``app[BODY_TIMEOUT] = 30.0``), 408 past it.

:func:`read_json` and :func:`read_concept` give the whole body that long;
:func:`stream_multipart_to_file` gives it to each chunk, so a large upload is
not cut off while data flows. :data:`DEFAULT_BODY_TIMEOUT` when unset.
"""
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_JSON_CONTENT_TYPE = "application/json"


_CANONICAL_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def get_guid(request: web.Request, name: str = "case_guid") -> UUID:
    """The GUID in the route parameter ``name``, 400 unless in its canonical form.

    PROTOCOL.md spells GUIDs in lower case, ``8-4-4-4-12``: upper case, no hyphens,
    braces or ``urn:uuid:`` (all of which ``UUID()`` reads) are refused, so that a
    case, a download key or an event channel has one name only.
    """
    value = request.match_info.get(name)
    if value is None:
        raise FusionHTTPError(400, f"missing {name}")
    if not _CANONICAL_GUID.fullmatch(value):
        raise FusionHTTPError(400, f"invalid GUID for {name}: expected lower-case 8-4-4-4-12 hex")
    return UUID(value)


def _body_timeout(request: web.BaseRequest) -> float:
    from aiohttp import web

    if isinstance(request, web.Request):
        return request.config_dict.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)
    return DEFAULT_BODY_TIMEOUT  # a low-level web.Server has no application


def _late_body(timeout: float) -> _BodyAbandonedError:
    return _BodyAbandonedError(408, f"request body not received within {timeout:g} s")


# Content-Encoding -> zlib wbits. The server turns aiohttp's own decompression
# off (``auto_decompress``): its parser refused a bad body in plain text before
# any middleware, and it had no cap on what a small body inflates to.
_BODY_ENCODINGS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}


def _body_decoder(request: web.BaseRequest) -> Any:
    """A zlib decompressor for the body's ``Content-Encoding``; None for identity."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    wbits = _BODY_ENCODINGS.get(encoding)
    if wbits is None:
        shown = " ".join(encoding.split())[:50]
        raise FusionHTTPError(415, f"unsupported Content-Encoding {shown!r}: use gzip or deflate")
    return zlib.decompressobj(wbits)


def _too_large(max_size: int) -> FusionHTTPError:
    return FusionHTTPError(413, f"request body too large: limit is {max_size} bytes")


async def _read_body(request: web.BaseRequest, max_size: int) -> bytes:
    """The whole body, decoded (gzip, deflate), at most ``max_size`` bytes once decoded.

    Counted on the bytes actually received: Content-Length may be absent
    (chunked) or lie, and reading request.content directly bypasses
    client_max_size.
    """
    declared = request.content_length
    if declared is not None and declared > max_size:
        raise _too_large(max_size)
    decoder = _body_decoder(request)
    parts: list[bytes] = []
    total = 0
    timeout = _body_timeout(request)
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                if decoder is not None:
                    # Inflated at most one byte past the cap: a bomb stops here.
                    chunk = decoder.decompress(chunk, max_size - total + 1)
                    if decoder.unconsumed_tail:
                        raise _too_large(max_size)
                total += len(chunk)
                if total > max_size:
                    raise _too_large(max_size)
                parts.append(chunk)
    except TimeoutError:
        raise _late_body(timeout) from None
    except zlib.error as exc:
        raise FusionHTTPError(400, f"body does not decode as its Content-Encoding: {exc}") from None
    if decoder is not None and not decoder.eof:
        raise FusionHTTPError(400, "body does not decode as its Content-Encoding: truncated")
    return b"".join(parts)


def _check_json_content_type(request: web.BaseRequest) -> None:
    if not request.headers.get("Content-Type"):
        return  # Older scripts send bare bodies; the JSON parser still decides.
    mimetype = request.content_type.lower()
    if mimetype != _JSON_CONTENT_TYPE and not (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        raise FusionHTTPError(400, f"expected an application/json body, got {mimetype}")
    charset = request.charset
    if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise FusionHTTPError(400, f"JSON body must be UTF-8, not {charset}")


_BOM = codecs.BOM_UTF8


async def _read_json_bytes(request: web.BaseRequest, max_size: int) -> bytes:
    _check_json_content_type(request)
    body = await _read_body(request, max_size)
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    if not body.strip():
        raise FusionHTTPError(400, "empty body: expected JSON")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FusionHTTPError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    return body


async def read_json(request: web.BaseRequest, max_size: int) -> Any:
    """The JSON body as builtins; 413 above ``max_size`` bytes, 400 when not JSON."""
    body = await _read_json_bytes(request, max_size)
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise FusionHTTPError(400, f"invalid JSON body: {exc}") from None
    except RecursionError:
        raise FusionHTTPError(400, "invalid JSON body: nested too deeply") from None


async def read_concept(
    request: web.BaseRequest, concept_type: type[ConceptT], max_size: int
) -> ConceptT:
    """The JSON body decoded straight into ``concept_type``.

    400 names the field path (``$.acs[0]``) where validation failed.
    """
    body = await _read_json_bytes(request, max_size)
    try:
        result: ConceptT = json_decoder(concept_type).decode(body)
    except msgspec.ValidationError as exc:
        raise FusionHTTPError(400, f"invalid {concept_type.__name__}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise FusionHTTPError(400, f"invalid JSON body: {exc}") from None
    except RecursionError:
        raise FusionHTTPError(400, "invalid JSON body: nested too deeply") from None
    return result


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip().strip('"')
    if value.startswith("["):
        # "[v6]" or "[v6]:port"
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.partition(":")[0]  # "v4:port"
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _split_forwarded(header: str) -> list[str]:
    """The ``for=`` values of a Forwarded header (RFC 7239), in order; "" when absent."""
    values: list[str] = []
    # Split on commas outside quoted strings, then on semicolons.
    for element in re.findall(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+', header):
        found = ""
        for pair in re.findall(r'(?:[^;"]|"(?:[^"\\]|\\.)*")+', element):
            key, _, value = pair.partition("=")
            if key.strip().lower() == "for":
                found = value.strip()
        values.append(found)
    return values


def client_ip(
    request: web.BaseRequest,
    trusted_proxies: Sequence[IPNetwork] = (),
    *,
    header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for",
) -> str:
    """Address of the client, for logs, audit and rate limits.

    ``X-Forwarded-For`` (or RFC 7239 ``Forwarded`` with ``header="forwarded"``) is only
    believed when the direct peer is in ``trusted_proxies``; the chain is then walked
    right to left and the first address outside the trusted networks is the client.
    Only one header is read, the one your proxy sets: a proxy overwrites or appends to
    that one, while the other would pass through as the client wrote it.
    """
    peer = request.remote or "unknown"
    if not trusted_proxies:
        return peer

    def trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in trusted_proxies)

    peer_address = _parse_ip(peer)
    if peer_address is None or not trusted(peer_address):
        return peer
    if header == "forwarded":
        hops = [
            hop
            for value in request.headers.getall("Forwarded", [])
            for hop in _split_forwarded(value)
        ]
    else:
        hops = [
            hop.strip()
            for value in request.headers.getall("X-Forwarded-For", [])
            for hop in value.split(",")
        ]
    current = peer_address
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:
            # Garbage or an obfuscated identifier: nothing further left can be trusted.
            break
        current = address
        if not trusted(address):
            break
    return str(current)


_NO_FIELDS: Mapping[str, str] = MappingProxyType({})

DEFAULT_MAX_FIELD_SIZE = 64 * 1024
"""Bytes of one multipart form field (not the file) at most: 413 past it."""
DEFAULT_MAX_PARTS = 32
"""Parts of one multipart body at most (the file included): 413 past it."""


class UploadedFile(NamedTuple):
    """A multipart upload saved to disk, with the body's other (text) fields.

    ``filename`` and ``content_type`` are the client's claims: untrusted.
    ``digests`` maps each hash algorithm to the hex digest of the saved bytes.
    """

    path: Path
    size: int
    filename: str | None
    content_type: str | None
    digests: Mapping[str, str] = _NO_FIELDS
    fields: Mapping[str, str] = _NO_FIELDS

    @property
    def sha256(self) -> str:
        """The SHA-256 (hex) of the saved bytes."""
        return self.digests["sha256"]


def _hashers(algorithms: Sequence[str]) -> dict[str, hashlib._Hash]:
    hashers = {}
    for name in dict.fromkeys(("sha256", *algorithms)):
        try:
            hasher = hashlib.new(name)
        except ValueError:
            raise ValueError(f"unknown hash algorithm {name!r}") from None
        if hasher.digest_size == 0:  # shake_*: no fixed length to give
            raise ValueError(f"hash algorithm {name!r} has no fixed digest size")
        hashers[name] = hasher
    return hashers


async def _read_field(part: aiohttp.BodyPartReader, name: str, max_size: int) -> str:
    data = bytearray()
    while chunk := await part.read_chunk():
        data += chunk
        if len(data) > max_size:
            raise FusionHTTPError(
                413, f"multipart field {name!r} too large: limit is {max_size} bytes"
            )
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise FusionHTTPError(400, f"multipart field {name!r} is not UTF-8 text") from None


async def stream_multipart_to_file(
    request: web.Request,
    path: Path | str,
    *,
    max_size: int,
    field: str = "file",
    hash_algorithms: Sequence[str] = ("sha256",),
    max_field_size: int = DEFAULT_MAX_FIELD_SIZE,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> UploadedFile:
    """Save the multipart part ``field`` to ``path`` without buffering it in memory.

    Every part of the body is read, in any order: the file part once (a second
    one is 400), streamed to disk and hashed as it arrives (SHA-256, plus
    ``hash_algorithms``, names of :func:`hashlib.new`), and each other part as a
    text field of at most ``max_field_size`` bytes, in
    :attr:`UploadedFile.fields` (a name given twice is 400). The file appears
    at ``path`` once the whole body is read, complete; on any error nothing is
    left there (nor any staging file) and a previous file at ``path`` is
    untouched: 413 past ``max_size`` bytes of file, a field past its cap, or
    more than ``max_parts`` parts; 400 when the body is not multipart/form-data,
    is malformed, or has no ``field`` part; 408 when no data came for
    :data:`BODY_TIMEOUT` seconds; a client that goes away mid-body ends it too.
    """
    hashers = _hashers(hash_algorithms)
    if not request.content_type.startswith("multipart/"):
        raise FusionHTTPError(
            400, f"expected a multipart/form-data body, got {request.content_type}"
        )
    if _body_decoder(request) is not None:
        # Files are compressed in their parts, if at all: a whole encoded body is refused.
        raise FusionHTTPError(415, "an upload must not have a Content-Encoding")
    path = Path(path)
    # Published only once every part is read: a bad part after the file must
    # not leave it (or replace an older one) at ``path``.
    staged = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    timeout = _body_timeout(request)
    loop = asyncio.get_running_loop()
    saved: tuple[int, str | None, str | None] | None = None
    fields: dict[str, str] = {}
    try:
        async with asyncio.timeout(timeout) as deadline:

            async def chunks(body: aiohttp.BodyPartReader) -> AsyncIterator[bytes]:
                while chunk := await body.read_chunk():
                    # An idle timeout: a large file may take long while data flows.
                    deadline.reschedule(loop.time() + timeout)
                    for hasher in hashers.values():
                        hasher.update(chunk)
                    yield chunk

            reader = await request.multipart()
            parts = 0
            while (part := await reader.next()) is not None:
                parts += 1
                if parts > max_parts:
                    raise FusionHTTPError(413, f"too many multipart parts: limit is {max_parts}")
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise FusionHTTPError(400, "nested multipart bodies are not accepted")
                name = part.name
                if not name:
                    raise FusionHTTPError(400, "a multipart part has no name")
                if name == field:
                    if saved is not None:
                        raise FusionHTTPError(400, f"multipart field {field!r} given twice")
                    try:
                        size = await stream_to_file(chunks(part), staged, max_size=max_size)
                    except SizeLimitError:
                        raise FusionHTTPError(
                            413, f"upload too large: limit is {max_size} bytes"
                        ) from None
                    saved = (size, part.filename, part.headers.get("Content-Type"))
                    continue
                if name in fields:
                    raise FusionHTTPError(400, f"multipart field {name!r} given twice")
                fields[name] = await _read_field(part, name, max_field_size)
                deadline.reschedule(loop.time() + timeout)
            if saved is None:
                raise FusionHTTPError(400, f"multipart field {field!r} is missing")
        await asyncio.to_thread(_commit_temp, staged, path)
    except TimeoutError:
        raise _late_body(timeout) from None
    except (ValueError, AssertionError, aiohttp.ClientPayloadError) as exc:
        # aiohttp's multipart reader reports malformed bodies with these.
        raise FusionHTTPError(400, f"malformed multipart body: {exc}") from None
    finally:
        # Synchronous on purpose: one unlink, and it must run even when cancelled.
        _discard(staged)
    size, filename, content_type = saved
    digests = {name: hasher.hexdigest() for name, hasher in hashers.items()}
    return UploadedFile(path, size, filename, content_type, digests, fields)
