"""UTC datetimes and their ISO 8601 form on the wire (``+00:00``; ``Z`` accepted)."""

from __future__ import annotations

from datetime import UTC, datetime

from fusion.concept import utcnow

__all__ = ["from_iso", "timestamp_iso", "to_iso", "utcnow"]


def to_iso(dt: datetime) -> str:
    """``2026-11-28T04:00:00+00:00``: ``dt`` converted to UTC; naive input is refused."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()!r}: give it a timezone (UTC)")
    return dt.astimezone(UTC).isoformat()


def from_iso(text: str, *, assume_utc: bool = False) -> datetime:
    """Parse an ISO 8601 datetime into an aware UTC datetime.

    ``Z`` and fractional seconds are accepted (beyond microseconds they are
    truncated). Text without an offset is refused with ValueError unless
    ``assume_utc`` is true.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected an ISO 8601 string, got {type(text).__name__}")
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"invalid ISO 8601 datetime {text!r}") from None
    if dt.tzinfo is None:
        if not assume_utc:
            raise ValueError(f"datetime {text!r} has no UTC offset (add +00:00 or Z)")
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


# (second, "YYYY-MM-DDTHH:MM:SS") of the last timestamp written: log records
# come many per second, and the date part is most of the cost. One tuple,
# replaced whole, so threads reading it never see half an update.
_last_second: tuple[int, str] = (-1, "")


def timestamp_iso(created: float, *, milliseconds: bool = False) -> str:
    """``2026-11-28T04:00:00.123456+00:00``: the POSIX time ``created`` in UTC.

    Exactly ``datetime.fromtimestamp(created, UTC).isoformat()`` with the
    fraction always written (``timespec="microseconds"``, or
    ``"milliseconds"`` with ``milliseconds=True``), at a fraction of the cost
    for timestamps of the same second (what log records are).
    """
    global _last_second
    second = int(created // 1)
    # As datetime.fromtimestamp rounds: the fraction to the microsecond, half to even.
    micro = round((created - second) * 1_000_000)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    cached_second, prefix = _last_second
    if cached_second != second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (second, prefix)
    if milliseconds:
        return f"{prefix}.{micro // 1000:03d}+00:00"
    return f"{prefix}.{micro:06d}+00:00"
