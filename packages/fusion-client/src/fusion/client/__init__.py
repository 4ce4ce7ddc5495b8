"""fusion.client: the async client of Fusion services, one class per API."""

from fusion.client.__about__ import __version__
from fusion.client.api import (
    FusionAuthAPIClient,
    FusionCaseAPIClient,
    FusionConstantAPIClient,
    FusionInfoAPIClient,
)
from fusion.client.client import USER_AGENT, FusionClient
from fusion.client.config import (
    FusionClientConfig,
    FusionClientProxyConfig,
    FusionClientTimeoutConfig,
)
from fusion.client.download import FusionDownloadAPIClient, ProgressCallback, safe_filename
from fusion.client.errors import FusionAPIError, FusionClientError, FusionConnectionError
from fusion.client.event import FusionEventAPIClient

__all__ = [
    "USER_AGENT",
    "FusionAPIError",
    "FusionAuthAPIClient",
    "FusionCaseAPIClient",
    "FusionClient",
    "FusionClientConfig",
    "FusionClientError",
    "FusionClientProxyConfig",
    "FusionClientTimeoutConfig",
    "FusionConnectionError",
    "FusionConstantAPIClient",
    "FusionDownloadAPIClient",
    "FusionEventAPIClient",
    "FusionInfoAPIClient",
    "ProgressCallback",
    "__version__",
    "safe_filename",
]
