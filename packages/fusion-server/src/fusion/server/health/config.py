"""Configuration of the health API."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["FusionHealthConfig"]


class FusionHealthConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``health`` section: ``GET /api/health`` and ``GET /api/ready``.

    Served by default, without authentication; ``health: null`` turns both off.
    """

    check_timeout: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    """Seconds each readiness check (shared store, storage, auth backend) may take
    before it counts as down, so a hung Redis or directory never hangs the probe."""
