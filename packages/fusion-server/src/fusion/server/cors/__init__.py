"""CORS for a browser front-end served from another origin (off by default)."""

from fusion.server.cors.config import FusionCORSConfig
from fusion.server.cors.middleware import setup_cors

__all__ = ["FusionCORSConfig", "setup_cors"]
