"""UTC datetimes and their ISO 8601 form on the wire (``+00:00``; ``Z`` accepted)."""

from __future__ import annotations

from datetime import UTC, datetime

from fusion.concept import utcnow

__all__ = ["from_iso", "to_iso", "utcnow"]


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
