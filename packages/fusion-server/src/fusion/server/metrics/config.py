"""Configuration of the metrics endpoint."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["FusionMetricsConfig"]


class FusionMetricsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``metrics`` section: Prometheus exposition (absent: no metrics at all).

    Needs the ``metrics`` extra (``fusion-server[metrics]``, prometheus-client).
    """

    # Path of the exposition, on the main port or on ``port``.
    path: Annotated[str, msgspec.Meta(pattern=r"^/[^{}]*$")] = "/metrics"
    # A separate listener for the exposition (so it is not reachable where the
    # API is); null: served on the main port, without authentication.
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    # Address of the separate listener; null: server.host.
    host: str | None = None
