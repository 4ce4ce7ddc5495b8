"""Fusion helpers shared by servers and clients.

Public names are re-exported here, grouped by module, and imported lazily:
``import fusion.helper`` stays cheap (a client never pays for zip, locks or
Redis), ``from fusion.helper import json_response`` loads only
``fusion.helper.http_envelope``. The modules themselves are the reference.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fusion.helper.__about__ import __version__

if TYPE_CHECKING:
    from fusion.helper.config import (
        ConfigError,
        TLSConfig,
        did_you_mean,
        env_ref,
        load_ssl_config,
        resolve_env_refs,
        tls_config,
    )
    from fusion.helper.datetime import (
        from_iso,
        to_iso,
        utcnow,
    )
    from fusion.helper.filesystem import (
        FilesystemUsage,
        UnsafePathError,
        atomic_write,
        atomic_write_async,
        directory_size,
        filesystem_usage,
        fsync_directory,
        iter_guid_items,
        safe_filename,
        safe_join,
        safe_segment,
    )
    from fusion.helper.flock import (
        FileLock,
    )
    from fusion.helper.http_envelope import (
        ErrorStatus,
        FusionHTTPError,
        envelope_middleware,
        error_response,
        json_response,
        map_error,
    )
    from fusion.helper.http_request import (
        IPNetwork,
        UploadedFile,
        client_ip,
        get_guid,
        read_concept,
        read_json,
        stream_multipart_to_file,
    )
    from fusion.helper.http_response import (
        content_disposition,
        stream_response,
    )
    from fusion.helper.logging import (
        FusionLogHandler,
        JsonFormatter,
        TextFormatter,
        escape_text,
        get_logger,
        setup_logging,
    )
    from fusion.helper.notifier import (
        NOTIFIER_TOKEN_HEADER,
        FusionNotifier,
        case_channel,
    )
    from fusion.helper.pubsub import (
        ChannelSubscription,
        FusionPubSub,
        Subscription,
    )
    from fusion.helper.serializing import (
        Dumpable,
        Loadable,
        SerializingError,
        SupportsDump,
        dumps,
        loads,
        to_builtins,
    )
    from fusion.helper.sse import (
        SSE_KEEPALIVE,
        SSEEvent,
        format_sse,
        iter_sse,
    )
    from fusion.helper.store import (
        GetBatcher,
        SharedStore,
        StoreMessage,
        StoreUnavailableError,
        create_store,
        message_id_key,
    )
    from fusion.helper.streaming import (
        DEFAULT_CHUNK_SIZE,
        SizeLimitError,
        iter_file,
        iter_fileobj,
        iter_text,
        stream_to_file,
    )
    from fusion.helper.subprocess import (
        CalledProcessError,
        CompletedProcess,
        run,
    )
    from fusion.helper.timer import (
        Timer,
    )
    from fusion.helper.tracing import (
        AUDIT_LOGGER,
        REDACTED,
        AuditRecord,
        FusionAccessLogger,
        redact_download_tokens,
        trace_user_op,
    )
    from fusion.helper.zip import (
        DEFAULT_MAX_ENTRIES,
        DEFAULT_MAX_RATIO,
        DEFAULT_MAX_TOTAL_SIZE,
        UnsafeZipError,
        create_zip,
        extract_zip,
    )

_EXPORTS: dict[str, str] = {
    "ConfigError": "config",
    "TLSConfig": "config",
    "did_you_mean": "config",
    "env_ref": "config",
    "load_ssl_config": "config",
    "resolve_env_refs": "config",
    "tls_config": "config",
    "from_iso": "datetime",
    "to_iso": "datetime",
    "utcnow": "datetime",
    "FilesystemUsage": "filesystem",
    "UnsafePathError": "filesystem",
    "atomic_write": "filesystem",
    "atomic_write_async": "filesystem",
    "directory_size": "filesystem",
    "filesystem_usage": "filesystem",
    "fsync_directory": "filesystem",
    "iter_guid_items": "filesystem",
    "safe_join": "filesystem",
    "safe_segment": "filesystem",
    "safe_filename": "filesystem",
    "FileLock": "flock",
    "FusionLogHandler": "logging",
    "FusionHTTPError": "http_envelope",
    "envelope_middleware": "http_envelope",
    "error_response": "http_envelope",
    "json_response": "http_envelope",
    "ErrorStatus": "http_envelope",
    "map_error": "http_envelope",
    "IPNetwork": "http_request",
    "UploadedFile": "http_request",
    "client_ip": "http_request",
    "get_guid": "http_request",
    "read_concept": "http_request",
    "read_json": "http_request",
    "stream_multipart_to_file": "http_request",
    "content_disposition": "http_response",
    "stream_response": "http_response",
    "JsonFormatter": "logging",
    "TextFormatter": "logging",
    "escape_text": "logging",
    "get_logger": "logging",
    "setup_logging": "logging",
    "NOTIFIER_TOKEN_HEADER": "notifier",
    "FusionNotifier": "notifier",
    "case_channel": "notifier",
    "ChannelSubscription": "pubsub",
    "FusionPubSub": "pubsub",
    "Subscription": "pubsub",
    "Dumpable": "serializing",
    "Loadable": "serializing",
    "SerializingError": "serializing",
    "SupportsDump": "serializing",
    "dumps": "serializing",
    "loads": "serializing",
    "to_builtins": "serializing",
    "SSE_KEEPALIVE": "sse",
    "SSEEvent": "sse",
    "format_sse": "sse",
    "iter_sse": "sse",
    "GetBatcher": "store",
    "SharedStore": "store",
    "StoreMessage": "store",
    "StoreUnavailableError": "store",
    "create_store": "store",
    "message_id_key": "store",
    "DEFAULT_CHUNK_SIZE": "streaming",
    "SizeLimitError": "streaming",
    "iter_file": "streaming",
    "iter_fileobj": "streaming",
    "iter_text": "streaming",
    "stream_to_file": "streaming",
    "CalledProcessError": "subprocess",
    "CompletedProcess": "subprocess",
    "run": "subprocess",
    "Timer": "timer",
    "AUDIT_LOGGER": "tracing",
    "AuditRecord": "tracing",
    "FusionAccessLogger": "tracing",
    "REDACTED": "tracing",
    "redact_download_tokens": "tracing",
    "trace_user_op": "tracing",
    "DEFAULT_MAX_ENTRIES": "zip",
    "DEFAULT_MAX_RATIO": "zip",
    "DEFAULT_MAX_TOTAL_SIZE": "zip",
    "UnsafeZipError": "zip",
    "create_zip": "zip",
    "extract_zip": "zip",
}

__all__ = [
    "AUDIT_LOGGER",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TOTAL_SIZE",
    "NOTIFIER_TOKEN_HEADER",
    "REDACTED",
    "SSE_KEEPALIVE",
    "AuditRecord",
    "CalledProcessError",
    "ChannelSubscription",
    "CompletedProcess",
    "ConfigError",
    "Dumpable",
    "ErrorStatus",
    "FileLock",
    "FilesystemUsage",
    "FusionAccessLogger",
    "FusionHTTPError",
    "FusionLogHandler",
    "FusionNotifier",
    "FusionPubSub",
    "GetBatcher",
    "IPNetwork",
    "JsonFormatter",
    "Loadable",
    "SSEEvent",
    "SerializingError",
    "SharedStore",
    "SizeLimitError",
    "StoreMessage",
    "StoreUnavailableError",
    "Subscription",
    "SupportsDump",
    "TLSConfig",
    "TextFormatter",
    "Timer",
    "UnsafePathError",
    "UnsafeZipError",
    "UploadedFile",
    "__version__",
    "atomic_write",
    "atomic_write_async",
    "case_channel",
    "client_ip",
    "content_disposition",
    "create_store",
    "create_zip",
    "did_you_mean",
    "directory_size",
    "dumps",
    "env_ref",
    "envelope_middleware",
    "error_response",
    "escape_text",
    "extract_zip",
    "filesystem_usage",
    "format_sse",
    "from_iso",
    "fsync_directory",
    "get_guid",
    "get_logger",
    "iter_file",
    "iter_fileobj",
    "iter_guid_items",
    "iter_sse",
    "iter_text",
    "json_response",
    "load_ssl_config",
    "loads",
    "map_error",
    "message_id_key",
    "read_concept",
    "read_json",
    "redact_download_tokens",
    "resolve_env_refs",
    "run",
    "safe_filename",
    "safe_join",
    "safe_segment",
    "setup_logging",
    "stream_multipart_to_file",
    "stream_response",
    "stream_to_file",
    "tls_config",
    "to_builtins",
    "to_iso",
    "trace_user_op",
    "utcnow",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion.helper' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fusion.helper.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
