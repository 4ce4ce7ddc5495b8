"""Compatibility: the names of the modules this one was split into.

New code imports from :mod:`fusion.helper.http_envelope` (the envelope and its
middleware), :mod:`fusion.helper.http_request` (reading requests),
:mod:`fusion.helper.http_response` (file answers) and :mod:`fusion.helper.sse`
(server-sent events). This module stays for services written against it, and
for a fusion-server release that still imports it.
"""

from __future__ import annotations

from fusion.helper.http_envelope import (
    FusionHTTPError,
    envelope_middleware,
    error_response,
    json_response,
)
from fusion.helper.http_request import (
    BODY_TIMEOUT,
    DEFAULT_BODY_TIMEOUT,
    IPNetwork,
    UploadedFile,
    client_ip,
    get_guid,
    read_concept,
    read_json,
    stream_multipart_to_file,
)
from fusion.helper.http_response import content_disposition, stream_response
from fusion.helper.sse import SSE_KEEPALIVE, SSEEvent, format_sse, iter_sse

__all__ = [
    "BODY_TIMEOUT",
    "DEFAULT_BODY_TIMEOUT",
    "SSE_KEEPALIVE",
    "FusionHTTPError",
    "IPNetwork",
    "SSEEvent",
    "UploadedFile",
    "client_ip",
    "content_disposition",
    "envelope_middleware",
    "error_response",
    "format_sse",
    "get_guid",
    "iter_sse",
    "json_response",
    "read_concept",
    "read_json",
    "stream_multipart_to_file",
    "stream_response",
]
