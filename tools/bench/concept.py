"""Encode/decode a Case and 1,000 Cases three ways, in one run, and print ratios.

1. the Concept API (``Case.to_json`` / ``Case.from_json``, ``to_json_many``...),
2. a raw msgspec Struct with the same fields (the floor),
3. a stdlib dataclass with hand-written to_dict/from_dict and the json module,
   validating types by hand (the older framework's pattern).

Targets (issue 2): Concept within 1.3x of raw msgspec; at least 10x faster
than the dataclass pattern at encoding and 4x at decoding.

Run: ``hatch run bench:concept`` (``--quick`` for a short smoke run).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import msgspec

from fusion.concept import Case


def _raw_struct(concept: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """A plain msgspec Struct with ``concept``'s own fields (names, types, defaults),
    without the Concept base: the floor, which cannot drift from the concept."""
    fields = []
    for info in msgspec.structs.fields(concept):
        if info.default_factory is not msgspec.NODEFAULT:
            default = msgspec.field(default_factory=info.default_factory)
        elif info.default is not msgspec.NODEFAULT:
            default = msgspec.field(default=info.default)
        else:
            default = msgspec.field()
        fields.append((info.name, info.type, default))
    return msgspec.defstruct("Raw" + concept.__name__, fields, kw_only=True)


RawCase = _raw_struct(Case)


def _dt_out(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt_in(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("expected a datetime string")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("naive datetime")
    return parsed


def _str_set(value: Any) -> set[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return set(value)


@dataclass
class DataclassCase:
    guid: UUID = field(default_factory=uuid4)
    managed: bool = False
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated: datetime | None = None
    closed: datetime | None = None
    tsid: str | None = None
    name: str = ""
    description: str = ""
    acs: set[str] = field(default_factory=set)
    acs_ro: set[str] = field(default_factory=set)
    webhooks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "guid": str(self.guid),
            "managed": self.managed,
            "created": self.created.isoformat(),
            "updated": _dt_out(self.updated),
            "closed": _dt_out(self.closed),
            "tsid": self.tsid,
            "name": self.name,
            "description": self.description,
            "acs": sorted(self.acs),
            "acs_ro": sorted(self.acs_ro),
            "webhooks": list(self.webhooks),
        }

    @classmethod
    def from_dict(cls, dct: dict[str, Any]) -> DataclassCase:
        for key in ("managed",):
            if key in dct and not isinstance(dct[key], bool):
                raise TypeError(key)
        for key in ("name", "description"):
            if key in dct and not isinstance(dct[key], str):
                raise TypeError(key)
        tsid = dct.get("tsid")
        if tsid is not None and not isinstance(tsid, str):
            raise TypeError("tsid")
        created = _dt_in(dct["created"]) if "created" in dct else datetime.now(UTC)
        return cls(
            guid=UUID(dct["guid"]) if "guid" in dct else uuid4(),
            managed=dct.get("managed", False),
            created=created or datetime.now(UTC),
            updated=_dt_in(dct.get("updated")),
            closed=_dt_in(dct.get("closed")),
            tsid=tsid,
            name=dct.get("name", ""),
            description=dct.get("description", ""),
            acs=_str_set(dct.get("acs", [])),
            acs_ro=_str_set(dct.get("acs_ro", [])),
            webhooks=list(dct.get("webhooks", [])),
        )


def _sample(i: int) -> dict[str, Any]:
    now = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)
    return {
        "guid": str(uuid4()),
        "managed": i % 2 == 0,
        "created": now.isoformat(),
        "updated": now.isoformat(),
        "closed": None,
        "tsid": f"TS-{i}",
        "name": f"case {i}",
        "description": "phishing wave targeting the finance department",
        "acs": ["cert", f"analyst{i % 7}"],
        "acs_ro": ["soc"],
        "webhooks": ["https://hooks.example.org/fusion"],
    }


def best_of(func: Callable[[], object], number: int, repeat: int) -> float:
    """Best per-call time in microseconds over ``repeat`` runs of ``number`` calls."""
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            func()
        timings.append((time.perf_counter() - start) / number * 1e6)
    return min(timings)


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    repeat = 3 if quick else 7
    samples = [_sample(i) for i in range(1000)]
    one = samples[0]
    raw_one = msgspec.json.encode(one)
    raw_many = msgspec.json.encode(samples)

    concept_one = Case.from_dict(one)
    concept_many = [Case.from_dict(s) for s in samples]
    struct_one = msgspec.convert(one, RawCase)
    struct_many = [msgspec.convert(s, RawCase) for s in samples]
    dc_one = DataclassCase.from_dict(one)
    dc_many = [DataclassCase.from_dict(s) for s in samples]

    encoder = msgspec.json.Encoder(order="deterministic")
    decoder_one = msgspec.json.Decoder(RawCase)
    decoder_many = msgspec.json.Decoder(list[RawCase])  # type: ignore[valid-type]

    # Every variant must produce the same data before its speed means anything.
    assert Case.from_json(concept_one.to_json()) == concept_one
    assert decoder_one.decode(encoder.encode(struct_one)) == struct_one
    assert DataclassCase.from_dict(json.loads(json.dumps(dc_one.to_dict()))) == dc_one
    assert msgspec.json.decode(concept_one.to_json()) == msgspec.json.decode(
        encoder.encode(struct_one)
    )

    n_one = 2000 if quick else 20000
    n_many = 10 if quick else 50
    rows = [
        (
            "encode 1 case",
            best_of(concept_one.to_json, n_one, repeat),
            best_of(lambda: encoder.encode(struct_one), n_one, repeat),
            best_of(lambda: json.dumps(dc_one.to_dict()).encode(), n_one, repeat),
        ),
        (
            "decode 1 case",
            best_of(lambda: Case.from_json(raw_one), n_one, repeat),
            best_of(lambda: decoder_one.decode(raw_one), n_one, repeat),
            best_of(lambda: DataclassCase.from_dict(json.loads(raw_one)), n_one, repeat),
        ),
        (
            "encode 1000 cases",
            best_of(lambda: Case.to_json_many(concept_many), n_many, repeat),
            best_of(lambda: encoder.encode(struct_many), n_many, repeat),
            best_of(lambda: json.dumps([c.to_dict() for c in dc_many]).encode(), n_many, repeat),
        ),
        (
            "decode 1000 cases",
            best_of(lambda: Case.from_json_many(raw_many), n_many, repeat),
            best_of(lambda: decoder_many.decode(raw_many), n_many, repeat),
            best_of(
                lambda: [DataclassCase.from_dict(d) for d in json.loads(raw_many)],
                n_many,
                repeat,
            ),
        ),
    ]
    print(
        f"{'operation':<20}{'concept us':>12}{'raw us':>10}{'dataclass us':>14}"
        f"{'concept/raw':>13}{'dataclass/concept':>19}"
    )
    failures = []
    for name, concept_t, raw_t, dc_t in rows:
        overhead = concept_t / raw_t
        speedup = dc_t / concept_t
        print(
            f"{name:<20}{concept_t:>12.2f}{raw_t:>10.2f}{dc_t:>14.2f}"
            f"{overhead:>12.2f}x{speedup:>18.1f}x"
        )
        target = 10.0 if name.startswith("encode") else 4.0
        if overhead > 1.3:
            failures.append(f"{name}: concept/raw {overhead:.2f}x > 1.3x")
        if speedup < target:
            failures.append(f"{name}: dataclass/concept {speedup:.1f}x < {target:.0f}x")
    print(
        f"geometric mean concept/raw: {statistics.geometric_mean([r[1] / r[2] for r in rows]):.2f}x"
    )
    if failures:
        print("MISSED TARGETS: " + "; ".join(failures))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
