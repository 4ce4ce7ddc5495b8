"""Configuration of the case API."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["FusionCaseAPIConfig"]


class FusionCaseAPIConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``case`` section (``case: {}`` serves the case API with its defaults)."""

    # Schemes a case's webhook URLs may use; other URLs are refused with 400.
    webhook_schemes: list[str] = msgspec.field(default_factory=lambda: ["http", "https"])
    # Most webhooks a case may carry.
    max_webhooks: int = 16
    # How many times an update or delete of a case is tried (read, authorize,
    # change, compare-and-swap write), then 409. An attempt fails only when
    # another replica's write of that case landed during it (requests of one
    # process on one case wait for each other), so this bounds how many
    # concurrent writes elsewhere one request outlasts.
    update_attempts: Annotated[int, msgspec.Meta(ge=1)] = 50
