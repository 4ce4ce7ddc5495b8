"""fusion.client: the async client of Fusion services, one class per API."""

from typing import TYPE_CHECKING, Any

from fusion.client.__about__ import __version__
from fusion.client.api import (
    FusionAuthAPIClient,
    FusionCaseAPIClient,
    FusionConstantAPIClient,
    FusionInfoAPIClient,
)
from fusion.client.client import USER_AGENT, FusionClient, QueryParams, QueryValue
from fusion.client.config import (
    FusionClientConfig,
    FusionClientProxyConfig,
    FusionClientTimeoutConfig,
)
from fusion.client.download import FusionDownloadAPIClient, ProgressCallback, safe_filename
from fusion.client.errors import FusionAPIError, FusionClientError, FusionConnectionError
from fusion.client.event import FusionEventAPIClient

if TYPE_CHECKING:
    from fusion.client.cookies import FusionCookieJar
    from fusion.client.progress import TransferProgress, TransferProgressCallback

# Loaded on first use, so that `import fusion.client` stays light.
_LAZY = {
    "FusionCookieJar": "fusion.client.cookies",
    "TransferProgress": "fusion.client.progress",
    "TransferProgressCallback": "fusion.client.progress",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion.client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


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
    "FusionCookieJar",
    "FusionDownloadAPIClient",
    "FusionEventAPIClient",
    "FusionInfoAPIClient",
    "ProgressCallback",
    "QueryParams",
    "QueryValue",
    "TransferProgress",
    "TransferProgressCallback",
    "__version__",
    "safe_filename",
]
