"""The Concept base: a msgspec Struct with the Fusion vocabulary."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import msgspec

__all__ = ["Concept", "ConceptError", "utcnow"]


class ConceptError(ValueError):
    """Raised when data cannot become a concept.

    The message names the field path (``$.field`` or ``$.case.acs[0]``)
    where msgspec found the problem.
    """


_ENCODER = msgspec.json.Encoder(order="deterministic")
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}

ConceptT = TypeVar("ConceptT", bound="Concept")


def utcnow() -> datetime:
    """Current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def json_decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    """Typed JSON decoder for ``type_``, built once and cached."""
    try:
        return _DECODERS[type_]
    except KeyError:
        decoder = _DECODERS[type_] = msgspec.json.Decoder(type_)
        return decoder


# RecursionError: msgspec's answer to JSON nested past its depth limit.
DECODE_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


def _decode_error(cls: type, exc: Exception) -> ConceptError:
    return ConceptError(f"invalid {cls.__name__}: {exc}")


class Concept(msgspec.Struct, kw_only=True):
    """Base of every Fusion wire type.

    Subclasses are plain Structs with typed fields and defaults. Unknown keys
    are ignored on input; invalid input raises :class:`ConceptError`.
    """

    # Fields that update() never changes, and fields it sets to now.
    __immutable_fields__: ClassVar[frozenset[str]] = frozenset()

    # -- builtins ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (datetimes and GUIDs as strings, sets sorted)."""
        result: dict[str, Any] = msgspec.to_builtins(self, order="deterministic")
        return result

    @classmethod
    def from_dict(cls, dct: Any) -> Self:
        """Validate ``dct`` (builtins, or Python objects) into a concept."""
        try:
            return msgspec.convert(dct, cls)
        except (msgspec.ValidationError, RecursionError) as exc:
            raise _decode_error(cls, exc) from exc

    # -- JSON -------------------------------------------------------------
    def to_json(self) -> bytes:
        """Encode as JSON bytes."""
        return _ENCODER.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Decode and validate JSON bytes or text."""
        try:
            return json_decoder(cls).decode(data)  # type: ignore[no-any-return]
        except DECODE_ERRORS as exc:
            raise _decode_error(cls, exc) from exc

    @classmethod
    def to_json_many(cls, items: list[Self]) -> bytes:
        """Encode a list of concepts as one JSON array."""
        return _ENCODER.encode(items)

    @classmethod
    def from_json_many(cls, data: bytes | str) -> list[Self]:
        """Decode a JSON array of concepts."""
        try:
            return json_decoder(list[cls]).decode(data)  # type: ignore[valid-type,no-any-return]
        except DECODE_ERRORS as exc:
            raise _decode_error(cls, exc) from exc

    # -- files ------------------------------------------------------------
    def to_filepath(self, filepath: Path | str) -> None:
        """Write to a ``.json``, ``.yaml``/``.yml`` or ``.toml`` file."""
        filepath = Path(filepath)
        filepath.write_bytes(_encode_for_suffix(filepath, self.to_dict()))

    @classmethod
    def from_filepath(cls, filepath: Path | str) -> Self:
        """Read a ``.json``, ``.yaml``/``.yml`` or ``.toml`` file."""
        filepath = Path(filepath)
        _check_suffix(filepath)
        try:
            raw = filepath.read_bytes()
        except OSError as exc:
            raise ConceptError(f"cannot read {filepath}: {exc.strerror or exc}") from exc
        return cls.from_dict(_decode_for_suffix(filepath, raw))

    # -- update -----------------------------------------------------------
    def _check_update(self, dct: dict[str, Any]) -> None:
        """Refuse an update that the concept's rules forbid (raise ConceptError)."""

    def _after_update(self) -> None:
        """Adjust derived fields after an update (``updated`` timestamps...)."""

    def update(self, dct: dict[str, Any]) -> None:
        """Apply ``dct`` in place following the concept's update rules.

        Every known key of ``dct`` replaces the stored value, except the
        concept's immutable fields. The result is validated as a whole first:
        on error nothing changes.
        """
        if not isinstance(dct, dict):
            raise ConceptError(f"invalid {type(self).__name__} update: expected an object")
        self._check_update(dct)
        fields = self.__struct_fields__
        changes = {
            key: value
            for key, value in dct.items()
            if key in fields and key not in self.__immutable_fields__
        }
        merged = self.to_dict()
        merged.update(changes)
        validated = type(self).from_dict(merged)
        for key in changes:
            setattr(self, key, getattr(validated, key))
        self._after_update()


_SUFFIXES = frozenset({".json", ".yaml", ".yml", ".toml"})


def _check_suffix(filepath: Path) -> None:
    if filepath.suffix.lower() not in _SUFFIXES:
        raise ConceptError(
            f"unsupported file type {filepath.suffix!r} for {filepath} (json, yaml, yml, toml)"
        )


def _encode_for_suffix(filepath: Path, data: dict[str, Any]) -> bytes:
    suffix = filepath.suffix.lower()
    if suffix == ".json":
        return msgspec.json.format(_ENCODER.encode(data), indent=2) + b"\n"
    if suffix in (".yaml", ".yml"):
        try:
            return msgspec.yaml.encode(data)
        except ImportError as exc:
            raise ConceptError("YAML files need PyYAML: pip install fusion-concept[yaml]") from exc
    if suffix == ".toml":
        try:
            return msgspec.toml.encode(_drop_none(data))
        except ImportError as exc:
            raise ConceptError(
                "writing TOML needs tomli-w: pip install fusion-concept[toml]"
            ) from exc
    raise ConceptError(f"unsupported file type {suffix!r} for {filepath} (json, yaml, yml, toml)")


def _decode_for_suffix(filepath: Path, raw: bytes) -> Any:
    suffix = filepath.suffix.lower()
    try:
        if suffix == ".json":
            return msgspec.json.decode(raw)
        if suffix in (".yaml", ".yml"):
            try:
                return msgspec.yaml.decode(raw)
            except ImportError as exc:
                raise ConceptError(
                    "YAML files need PyYAML: pip install fusion-concept[yaml]"
                ) from exc
        if suffix == ".toml":
            return msgspec.toml.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ConceptError(f"cannot parse {filepath}: {exc}") from exc
    raise ConceptError(f"unsupported file type {suffix!r} for {filepath} (json, yaml, yml, toml)")


def _drop_none(value: Any) -> Any:
    # TOML has no null: absent keys take their defaults on the way back.
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
