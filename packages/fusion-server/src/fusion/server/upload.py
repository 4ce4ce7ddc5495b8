"""Receiving a file upload in a service's route: streamed to disk, capped, atomic."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import msgspec
from aiohttp import web

from fusion.helper.filesystem import fsync_directory, safe_filename, safe_join
from fusion.helper.http_envelope import FusionHTTPError
from fusion.helper.http_request import (
    DEFAULT_MAX_FIELD_SIZE,
    DEFAULT_MAX_PARTS,
    stream_multipart_to_file,
)

__all__ = ["Upload", "receive_upload"]

FieldsT = TypeVar("FieldsT")
StructT = TypeVar("StructT", bound=msgspec.Struct)


def _publish(staged: Path, final: Path, overwrite: bool) -> None:
    # link() refuses an existing target atomically, where exists() then rename() would race.
    try:
        if overwrite:
            os.replace(staged, final)
        else:
            os.link(staged, final)
            staged.unlink()
        fsync_directory(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()


_TEXT_TYPES = (msgspec.inspect.StrType, msgspec.inspect.NoneType)


@functools.cache
def _text_fields(fields_type: type[msgspec.Struct]) -> frozenset[str]:
    """The wire names of the Struct's fields that take the part's text as it is."""
    info = msgspec.inspect.type_info(fields_type)
    if not isinstance(info, msgspec.inspect.StructType):
        raise TypeError(f"fields must be a msgspec.Struct type, not {fields_type!r}")
    names = set()
    for struct_field in info.fields:
        kind = struct_field.type
        members = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
        if all(isinstance(member, _TEXT_TYPES) for member in members):
            names.add(struct_field.encode_name)
    return frozenset(names)


def _decode_fields(raw: Mapping[str, str], fields_type: type[StructT]) -> StructT:
    text_fields = _text_fields(fields_type)
    values: dict[str, Any] = {}
    for name, text in raw.items():
        if name in text_fields:
            values[name] = text
            continue
        try:
            values[name] = msgspec.json.decode(text)
        except (msgspec.DecodeError, RecursionError):
            # Not JSON: a bare word such as an enum value or a date, which
            # the conversion below checks like any other value.
            values[name] = text
    try:
        return msgspec.convert(values, fields_type, strict=False)
    except msgspec.ValidationError as exc:
        raise FusionHTTPError(400, f"invalid upload fields: {exc}") from None


@dataclass(frozen=True, slots=True)
class Upload(Generic[FieldsT]):
    """A received upload: the stored file and the body's other fields.

    ``filename`` and ``content_type`` are the client's claims (untrusted);
    ``digests`` maps each hash algorithm to the hex digest of the stored bytes.
    """

    path: Path
    """Where the file is stored (its final name)."""
    size: int
    filename: str | None
    content_type: str | None
    digests: Mapping[str, str]
    fields: FieldsT
    """The text fields (``dict[str, str]``), or the service's Struct decoded from them."""

    @property
    def sha256(self) -> str:
        """The SHA-256 (hex) of the stored bytes."""
        return self.digests["sha256"]


@overload
async def receive_upload(
    request: web.Request,
    directory: Path | str,
    filename: str | None = None,
    *,
    max_size: int,
    field: str = "file",
    overwrite: bool = False,
    fields: None = None,
    hash_algorithms: Sequence[str] = ("sha256",),
    max_field_size: int = DEFAULT_MAX_FIELD_SIZE,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> Upload[dict[str, str]]: ...


@overload
async def receive_upload(
    request: web.Request,
    directory: Path | str,
    filename: str | None = None,
    *,
    max_size: int,
    field: str = "file",
    overwrite: bool = False,
    fields: type[StructT],
    hash_algorithms: Sequence[str] = ("sha256",),
    max_field_size: int = DEFAULT_MAX_FIELD_SIZE,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> Upload[StructT]: ...


async def receive_upload(
    request: web.Request,
    directory: Path | str,
    filename: str | None = None,
    *,
    max_size: int,
    field: str = "file",
    overwrite: bool = False,
    fields: type[msgspec.Struct] | None = None,
    hash_algorithms: Sequence[str] = ("sha256",),
    max_field_size: int = DEFAULT_MAX_FIELD_SIZE,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> Upload[Any]:
    """Save the multipart part ``field`` of ``request`` into ``directory``, with its fields.

    The file is named ``filename`` when given (chosen by the service), else the
    client's file name; either is made safe by
    :func:`~fusion.helper.filesystem.safe_filename`. It is streamed to
    disk (never held in memory) and hashed as it arrives (SHA-256, plus
    ``hash_algorithms``), refused with 413 past ``max_size`` bytes, and
    appears at its final name complete or not at all: on any error nothing is
    left behind. The body's other parts, before or after the file, are text
    fields of at most ``max_field_size`` bytes each, ``max_parts`` parts in all
    (413 past either); ``fields`` is a ``msgspec.Struct`` type to decode them
    into (a field the Struct types as a string is taken as it is, any other
    is read as JSON, so ``metadata={"tags": ["a"]}`` decodes into a nested
    Struct), 400 naming the field when they do not fit; without it
    :attr:`Upload.fields` is the ``dict`` of texts. An existing file is
    replaced only with ``overwrite=True`` (otherwise 409). A name with nothing
    usable left raises :class:`~fusion.helper.filesystem.UnsafePathError`,
    which the envelope answers 400; the body's own errors (413, 400, 408) and
    409 are :class:`FusionHTTPError`. See
    :func:`~fusion.helper.http_request.stream_multipart_to_file` for the body rules.
    """
    directory = Path(directory)
    if filename is not None:
        filename = safe_filename(filename)
    if fields is not None:
        _text_fields(fields)  # a wrong type is the service's bug: found before the body
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    # The client's name is only known once its part is read, so the data lands
    # under a hidden staging name first and is published once complete.
    staged = directory / f".upload-{secrets.token_hex(8)}.part"
    try:
        uploaded = await stream_multipart_to_file(
            request,
            staged,
            max_size=max_size,
            field=field,
            hash_algorithms=hash_algorithms,
            max_field_size=max_field_size,
            max_parts=max_parts,
        )
        decoded: Any = (
            dict(uploaded.fields) if fields is None else _decode_fields(uploaded.fields, fields)
        )
        name = filename if filename is not None else safe_filename(uploaded.filename)
        final = safe_join(directory, name)
        try:
            await asyncio.to_thread(_publish, staged, final, overwrite)
        except FileExistsError:
            raise FusionHTTPError(409, f"{name!r} already exists") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    return Upload(
        final, uploaded.size, uploaded.filename, uploaded.content_type, uploaded.digests, decoded
    )
