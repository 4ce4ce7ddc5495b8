"""fusion.server: the building blocks of a Fusion service and the ``fusion-server`` command.

Public names are re-exported here, grouped by module, and imported lazily:
``import fusion.server`` stays cheap (no auth backends, ldap3 or pyjwt until a
name needs them), ``from fusion.server import FusionServer`` loads what the
server needs. The modules themselves are the reference.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fusion.server.__about__ import __version__

if TYPE_CHECKING:
    from fusion.server.app import (
        FusionServer,
        serve_app,
    )
    from fusion.server.appkeys import (
        AUTH,
        CASE_API,
        CONFIG,
        CONSTANT,
        DOWNLOADS,
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
    from fusion.server.case import (
        CaseContext,
        FusionCaseAPI,
        FusionCaseAPIConfig,
    )
    from fusion.server.config import (
        ConfigError,
        FusionServerConfig,
        ServerConfig,
        SharedStoreConfig,
        StorageConfig,
        decode_config,
        load_config,
    )
    from fusion.server.constant import (
        FusionConstantAPI,
        FusionConstantAPIConfig,
    )
    from fusion.server.download import (
        FusionDownloadAPI,
        FusionDownloadConfig,
    )
    from fusion.server.event import (
        CaseEventPublisher,
        FusionEventAPI,
        FusionEventConfig,
    )
    from fusion.server.info import (
        FusionInfoAPI,
        FusionInfoAPIConfig,
    )
    from fusion.server.openapi import Operation, build_openapi, operation, setup_openapi
    from fusion.server.storage import (
        CaseConflictError,
        CaseExistsError,
        CaseNotFoundError,
        ConceptStorage,
        FusionStorage,
        RowExistsError,
        SQLiteStorage,
        SQLiteTable,
        SyncLayout,
        SyncState,
        SyncTree,
        VersionedCase,
        case_folder_name,
    )
    from fusion.server.synchronizer import (
        FusionSynchronizer,
        FusionSynchronizerConfig,
    )
    from fusion.server.upload import (
        Upload,
        receive_upload,
    )

_EXPORTS: dict[str, str] = {
    "FusionServer": "app",
    "serve_app": "app",
    "AUTH": "appkeys",
    "CASE_API": "appkeys",
    "CONFIG": "appkeys",
    "CONSTANT": "appkeys",
    "DOWNLOADS": "appkeys",
    "EVENTS": "appkeys",
    "PUBSUB": "appkeys",
    "STORAGE": "appkeys",
    "STORE": "appkeys",
    "CaseEventSink": "appkeys",
    "Access": "auth",
    "Action": "auth",
    "FusionAuthAPI": "auth",
    "FusionAuthAPIConfig": "auth",
    "can_access_case": "auth",
    "can_delete": "auth",
    "CaseContext": "case",
    "FusionCaseAPI": "case",
    "FusionCaseAPIConfig": "case",
    "ConfigError": "config",
    "FusionServerConfig": "config",
    "ServerConfig": "config",
    "SharedStoreConfig": "config",
    "StorageConfig": "config",
    "decode_config": "config",
    "load_config": "config",
    "FusionConstantAPI": "constant",
    "FusionConstantAPIConfig": "constant",
    "FusionDownloadAPI": "download",
    "FusionDownloadConfig": "download",
    "CaseEventPublisher": "event",
    "FusionEventAPI": "event",
    "FusionEventConfig": "event",
    "FusionInfoAPI": "info",
    "FusionInfoAPIConfig": "info",
    "Operation": "openapi",
    "build_openapi": "openapi",
    "operation": "openapi",
    "setup_openapi": "openapi",
    "CaseConflictError": "storage",
    "CaseExistsError": "storage",
    "CaseNotFoundError": "storage",
    "ConceptStorage": "storage",
    "FusionStorage": "storage",
    "RowExistsError": "storage",
    "SQLiteStorage": "storage",
    "SQLiteTable": "storage",
    "SyncLayout": "storage",
    "SyncState": "storage",
    "SyncTree": "storage",
    "VersionedCase": "storage",
    "case_folder_name": "storage",
    "FusionSynchronizer": "synchronizer",
    "FusionSynchronizerConfig": "synchronizer",
    "Upload": "upload",
    "receive_upload": "upload",
}

__all__ = [
    "AUTH",
    "CASE_API",
    "CONFIG",
    "CONSTANT",
    "DOWNLOADS",
    "EVENTS",
    "PUBSUB",
    "STORAGE",
    "STORE",
    "Access",
    "Action",
    "CaseConflictError",
    "CaseContext",
    "CaseEventPublisher",
    "CaseEventSink",
    "CaseExistsError",
    "CaseNotFoundError",
    "ConceptStorage",
    "ConfigError",
    "FusionAuthAPI",
    "FusionAuthAPIConfig",
    "FusionCaseAPI",
    "FusionCaseAPIConfig",
    "FusionConstantAPI",
    "FusionConstantAPIConfig",
    "FusionDownloadAPI",
    "FusionDownloadConfig",
    "FusionEventAPI",
    "FusionEventConfig",
    "FusionInfoAPI",
    "FusionInfoAPIConfig",
    "FusionServer",
    "FusionServerConfig",
    "FusionStorage",
    "FusionSynchronizer",
    "FusionSynchronizerConfig",
    "Operation",
    "RowExistsError",
    "SQLiteStorage",
    "SQLiteTable",
    "ServerConfig",
    "SharedStoreConfig",
    "StorageConfig",
    "SyncLayout",
    "SyncState",
    "SyncTree",
    "Upload",
    "VersionedCase",
    "__version__",
    "build_openapi",
    "can_access_case",
    "can_delete",
    "case_folder_name",
    "decode_config",
    "load_config",
    "operation",
    "receive_upload",
    "serve_app",
    "setup_openapi",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fusion.server.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
