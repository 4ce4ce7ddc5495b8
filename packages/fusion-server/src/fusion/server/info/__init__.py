"""The info API: ``GET /api/info``."""

from fusion.server.info.api import FusionInfoAPI
from fusion.server.info.config import FusionInfoAPIConfig

__all__ = ["FusionInfoAPI", "FusionInfoAPIConfig"]
