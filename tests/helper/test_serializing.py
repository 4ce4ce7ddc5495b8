"""fusion.helper.serializing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import pytest

from fusion.concept import Case
from fusion.helper.serializing import (
    Dumpable,
    Loadable,
    SerializingError,
    SupportsDump,
    dumps,
    loads,
    to_builtins,
)

GUID = UUID("0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d11")
WHEN = datetime(2026, 11, 28, 4, tzinfo=UTC)


class Job(Dumpable, Loadable, msgspec.Struct, kw_only=True):
    guid: UUID
    created: datetime
    tags: set[str] = msgspec.field(default_factory=set)
    retries: int = 0


@dataclasses.dataclass
class Point(Dumpable, Loadable):
    x: int
    y: int


def test_struct_mixins_round_trip() -> None:
    job = Job(guid=GUID, created=WHEN, tags={"b", "a"})
    data = job.dump()
    assert data == (
        b'{"guid":"0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d11",'
        b'"created":"2026-11-28T04:00:00Z","tags":["a","b"],"retries":0}'
    )
    assert Job.load(data) == job
    assert Job.load(data.decode()) == job
    assert job.to_builtins()["tags"] == ["a", "b"]
    assert Job.from_builtins(job.to_builtins()) == job
    assert isinstance(job, SupportsDump)


def test_dataclass_mixins() -> None:
    point = Point(1, 2)
    assert point.dump() == b'{"x":1,"y":2}'
    assert Point.load(b'{"x":3,"y":4}') == Point(3, 4)


def test_functions() -> None:
    assert dumps({"b": 1, "a": {3, 1, 2}}) == b'{"a":[1,2,3],"b":1}'
    assert loads(b"[1, 2]", list[int]) == [1, 2]
    case = Case(name="incident")
    assert loads(dumps(case), Case) == case
    assert to_builtins({"when": WHEN}) == {"when": "2026-11-28T04:00:00Z"}


def test_errors_name_the_field() -> None:
    with pytest.raises(SerializingError, match=r"invalid Job: .*\$\.retries"):
        Job.load(
            b'{"guid": "0b5c6c7e-51b1-4c8a-8c2a-3e1f6a9f0d11", '
            b'"created": "2026-11-28T04:00:00Z", "retries": "many"}'
        )
    with pytest.raises(SerializingError, match="invalid JSON for Job"):
        Job.load(b"{")
    with pytest.raises(SerializingError, match="invalid JSON for list"):
        loads(b"[" * 100_000 + b"]" * 100_000, list[Any])
    with pytest.raises(SerializingError, match=r"invalid Point: .*\$\.x"):
        Point.from_builtins({"x": "one", "y": 2})
    with pytest.raises(SerializingError, match="missing required field `guid`"):
        Job.from_builtins({"created": "2026-11-28T04:00:00Z"})
    with pytest.raises(SerializingError, match=r"invalid list\[int\]: .*\$\[0\]"):
        loads(b'["a"]', list[int])
    with pytest.raises(SerializingError, match="cannot encode object"):
        dumps(object())
    with pytest.raises(SerializingError, match="cannot encode"):
        to_builtins({"x": object()})
    assert issubclass(SerializingError, ValueError)
