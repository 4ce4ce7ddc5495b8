"""Configuration of the info API."""

from __future__ import annotations

from typing import Annotated

import msgspec

from fusion.server.__about__ import __version__

__all__ = ["FusionInfoAPIConfig"]


class FusionInfoAPIConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``info`` section: what ``GET /api/info`` says the service is."""

    api: Annotated[str, msgspec.Meta(min_length=1)] = "fusion"
    version: str = __version__
    # When true, only authenticated callers may read the info.
    require_auth: bool = False
