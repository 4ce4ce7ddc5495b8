"""Liveness and readiness: ``GET /api/health`` and ``GET /api/ready``."""

from fusion.server.health.api import READY_CHECKS, FusionHealthAPI
from fusion.server.health.config import FusionHealthConfig

__all__ = ["READY_CHECKS", "FusionHealthAPI", "FusionHealthConfig"]
