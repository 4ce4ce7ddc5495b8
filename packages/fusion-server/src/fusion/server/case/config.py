"""Configuration of the case API."""

from __future__ import annotations

import msgspec

__all__ = ["FusionCaseAPIConfig"]


class FusionCaseAPIConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``case`` section (``case: {}`` serves the case API with its defaults)."""

    # Schemes a case's webhook URLs may use; other URLs are refused with 400.
    webhook_schemes: list[str] = msgspec.field(default_factory=lambda: ["http", "https"])
    # Most webhooks a case may carry.
    max_webhooks: int = 16
