"""fusion.helper.datetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fusion.helper.datetime import from_iso, to_iso, utcnow


def test_utcnow_is_aware() -> None:
    now = utcnow()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)


def test_to_iso() -> None:
    assert to_iso(datetime(2026, 11, 28, 4, 0, tzinfo=UTC)) == "2026-11-28T04:00:00+00:00"
    paris = timezone(timedelta(hours=1))
    assert to_iso(datetime(2026, 11, 28, 5, 0, 0, 250000, tzinfo=paris)) == (
        "2026-11-28T04:00:00.250000+00:00"
    )
    with pytest.raises(ValueError, match="naive datetime"):
        to_iso(datetime(2026, 11, 28))  # noqa: DTZ001 - refusing naive input is the point


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T04:00:00+00:00", datetime(2026, 11, 28, 4, tzinfo=UTC)),
        ("2026-11-28T04:00:00Z", datetime(2026, 11, 28, 4, tzinfo=UTC)),
        ("2026-11-28T04:00:00.5Z", datetime(2026, 11, 28, 4, 0, 0, 500000, tzinfo=UTC)),
        (
            "2026-11-28T04:00:00.123456789+00:00",
            datetime(2026, 11, 28, 4, 0, 0, 123456, tzinfo=UTC),
        ),
        ("2026-11-28T06:00:00+02:00", datetime(2026, 11, 28, 4, tzinfo=UTC)),
        (" 2026-11-28T04:00:00Z ", datetime(2026, 11, 28, 4, tzinfo=UTC)),
    ],
)
def test_from_iso(text: str, expected: datetime) -> None:
    parsed = from_iso(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_from_iso_round_trip() -> None:
    now = utcnow()
    assert from_iso(to_iso(now)) == now


def test_from_iso_naive() -> None:
    with pytest.raises(ValueError, match="has no UTC offset"):
        from_iso("2026-11-28T04:00:00")
    assert from_iso("2026-11-28T04:00:00", assume_utc=True) == datetime(2026, 11, 28, 4, tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-28T25:00Z"])
def test_from_iso_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid ISO 8601 datetime"):
        from_iso(text)


def test_from_iso_type() -> None:
    with pytest.raises(TypeError, match="expected an ISO 8601 string, got int"):
        from_iso(12)  # type: ignore[arg-type]


def test_timestamp_iso_is_what_datetime_writes() -> None:
    import random
    from datetime import UTC, datetime

    from fusion.helper.datetime import timestamp_iso

    rng = random.Random(20261202)
    # Same-second runs (the cached date part), far-apart seconds, and the
    # fractions where rounding to the microsecond carries into the next second.
    stamps = [1_764_633_600 + i * 1e-7 for i in range(20_000)]
    stamps += [rng.uniform(0, 4e9) for _ in range(20_000)]
    stamps += [1_764_633_600.9999996, 1_764_633_600.9999994, 1_764_633_599.0, 0.0, 1e-7]
    for stamp in stamps:
        written = datetime.fromtimestamp(stamp, UTC)
        assert timestamp_iso(stamp) == written.isoformat(timespec="microseconds"), stamp
        assert timestamp_iso(stamp, milliseconds=True) == written.isoformat(
            timespec="milliseconds"
        ), stamp
