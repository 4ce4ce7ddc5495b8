"""Configuration of the constant API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

__all__ = ["FusionConstantAPIConfig"]


class FusionConstantAPIConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``constant`` section: the file holding the service constant (YAML, JSON or TOML)."""

    path: Annotated[str, msgspec.Meta(min_length=1)] = "constant.yml"
    # Seconds between two checks of the file for changes (a stat, by a
    # background task, so FusionConstantAPI.current is never older; 0: on every
    # GET /api/constant, and every second in the background).
    reload_interval: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    # When true, only authenticated callers may read the constant.
    require_auth: bool = False

    @property
    def filepath(self) -> Path:
        return Path(self.path)
