"""Prometheus metrics of a Fusion server: the ``metrics`` section, extra ``metrics``.

Only :mod:`fusion.server.metrics.config` is imported by the configuration;
:mod:`fusion.server.metrics.api`, which imports prometheus-client, is imported
when the section is present.
"""

from fusion.server.metrics.config import FusionMetricsConfig

__all__ = ["FusionMetricsConfig"]
