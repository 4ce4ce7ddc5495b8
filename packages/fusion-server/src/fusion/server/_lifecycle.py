"""The one guard of what an API only has once its application started."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["started"]

_T = TypeVar("_T")


def started(value: _T | None, api: str) -> _T:
    """``value``, which the API sets when its application starts (in its cleanup
    context); RuntimeError naming the API before that."""
    if value is None:
        raise RuntimeError(f"{api} used before the application started")
    return value
