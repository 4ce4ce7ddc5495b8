"""The synchronizer: a service's per-case job, run periodically and on case events."""

from fusion.server.synchronizer.config import FusionSynchronizerConfig
from fusion.server.synchronizer.sync import FusionSynchronizer, SyncJob

__all__ = ["FusionSynchronizer", "FusionSynchronizerConfig", "SyncJob"]
