"""JSON serialisation with msgspec for any struct, dataclass or builtin value.

:class:`~fusion.concept.Concept` has its own ``to_json``/``from_json``; these
helpers give the same to other types (store payloads, internal records) through
the :class:`Dumpable` and :class:`Loadable` mixins.
"""

from __future__ import annotations

from typing import Any, Protocol, Self, TypeVar, get_origin, runtime_checkable

import msgspec

from fusion.concept import json_decoder

__all__ = [
    "Dumpable",
    "Loadable",
    "SerializingError",
    "SupportsDump",
    "dumps",
    "loads",
    "to_builtins",
]

T = TypeVar("T")

_ENCODER = msgspec.json.Encoder(order="deterministic")


class SerializingError(ValueError):
    """Data cannot be encoded or decoded; the message names the field path."""


def dumps(obj: Any) -> bytes:
    """JSON bytes of ``obj`` (dict keys and sets sorted, so equal values give equal bytes)."""
    try:
        return _ENCODER.encode(obj)
    except (msgspec.EncodeError, TypeError) as exc:
        raise SerializingError(f"cannot encode {type(obj).__name__}: {exc}") from exc


def loads(data: bytes | str, type_: type[T]) -> T:
    """Decode and validate JSON into ``type_`` (decoders are cached per type)."""
    try:
        result: T = json_decoder(type_).decode(data)
    except msgspec.ValidationError as exc:  # a DecodeError subclass: catch it first
        raise SerializingError(f"invalid {_name(type_)}: {exc}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SerializingError(f"invalid JSON for {_name(type_)}: {exc}") from exc
    return result


def to_builtins(obj: Any) -> Any:
    """``obj`` as JSON-compatible builtins (datetimes and UUIDs as strings)."""
    try:
        return msgspec.to_builtins(obj, order="deterministic")
    except (msgspec.EncodeError, TypeError) as exc:
        raise SerializingError(f"cannot encode {type(obj).__name__}: {exc}") from exc


def _name(type_: Any) -> str:
    if get_origin(type_) is None:
        return getattr(type_, "__name__", None) or repr(type_)
    return repr(type_)  # list[int], not "list"


@runtime_checkable
class SupportsDump(Protocol):
    """Anything with ``dump() -> bytes``."""

    def dump(self) -> bytes: ...


class Dumpable:
    """Mixin: ``obj.dump()`` to JSON bytes, ``obj.to_builtins()`` to plain values.

    Mix into ``msgspec.Struct`` subclasses (``class Job(Dumpable, msgspec.Struct)``),
    dataclasses, or anything msgspec encodes.
    """

    __slots__ = ()

    def dump(self) -> bytes:
        return dumps(self)

    def to_builtins(self) -> Any:
        return to_builtins(self)


class Loadable:
    """Mixin: ``Type.load(data)`` from JSON, ``Type.from_builtins(obj)`` from plain values."""

    __slots__ = ()

    @classmethod
    def load(cls, data: bytes | str) -> Self:
        return loads(data, cls)

    @classmethod
    def from_builtins(cls, obj: Any) -> Self:
        try:
            return msgspec.convert(obj, cls)
        except msgspec.ValidationError as exc:
            raise SerializingError(f"invalid {cls.__name__}: {exc}") from exc
