"""One-time downloads of server-side files."""

from fusion.server.download.api import (
    DOWNLOADS,
    DownloadError,
    DownloadRootError,
    FusionDownloadAPI,
    TooManyPendingDownloadsError,
)
from fusion.server.download.config import FusionDownloadConfig

__all__ = [
    "DOWNLOADS",
    "DownloadError",
    "DownloadRootError",
    "FusionDownloadAPI",
    "FusionDownloadConfig",
    "TooManyPendingDownloadsError",
]
