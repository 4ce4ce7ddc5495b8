"""The constant API: ``GET /api/constant``, reloaded when its file changes."""

from fusion.server.constant.api import FusionConstantAPI
from fusion.server.constant.config import FusionConstantAPIConfig

__all__ = ["FusionConstantAPI", "FusionConstantAPIConfig"]
