"""fusion.server: the building blocks of a Fusion service and the ``fusion-server`` command."""

from fusion.server.__about__ import __version__
from fusion.server.app import FusionServer
from fusion.server.appkeys import (
    AUTH,
    CONFIG,
    CONSTANT,
    EVENTS,
    PUBSUB,
    STORAGE,
    STORE,
    CaseEventSink,
)
from fusion.server.auth import (
    Access,
    Action,
    FusionAuthAPI,
    FusionAuthAPIConfig,
    can_access_case,
    can_delete,
)
from fusion.server.case import FusionCaseAPI, FusionCaseAPIConfig
from fusion.server.config import (
    ConfigError,
    FusionServerConfig,
    ServerConfig,
    SharedStoreConfig,
    StorageConfig,
    decode_config,
    load_config,
)
from fusion.server.constant import FusionConstantAPI, FusionConstantAPIConfig
from fusion.server.info import FusionInfoAPI, FusionInfoAPIConfig

__all__ = [
    "AUTH",
    "CONFIG",
    "CONSTANT",
    "EVENTS",
    "PUBSUB",
    "STORAGE",
    "STORE",
    "Access",
    "Action",
    "CaseEventSink",
    "ConfigError",
    "FusionAuthAPI",
    "FusionAuthAPIConfig",
    "FusionCaseAPI",
    "FusionCaseAPIConfig",
    "FusionConstantAPI",
    "FusionConstantAPIConfig",
    "FusionInfoAPI",
    "FusionInfoAPIConfig",
    "FusionServer",
    "FusionServerConfig",
    "ServerConfig",
    "SharedStoreConfig",
    "StorageConfig",
    "__version__",
    "can_access_case",
    "can_delete",
    "decode_config",
    "load_config",
]
