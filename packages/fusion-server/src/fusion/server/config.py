"""The configuration of a Fusion server: one file decoded into typed Structs.

Every Struct refuses unknown keys, so a typo (``prot: 8080``) is an error
naming the key instead of a silently ignored setting. A service extends the
configuration by subclassing :class:`FusionServerConfig` (new sections) or a
section Struct (new settings), and passes its class to :func:`load_config`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar, overload

import msgspec

from fusion.helper.config import ConfigError, did_you_mean, resolve_env_refs
from fusion.helper.http_request import DEFAULT_BODY_TIMEOUT, IPNetwork
from fusion.server.auth.config import FusionAuthAPIConfig
from fusion.server.case.config import FusionCaseAPIConfig
from fusion.server.constant.config import FusionConstantAPIConfig
from fusion.server.cors.config import FusionCORSConfig
from fusion.server.download.config import FusionDownloadConfig
from fusion.server.event.config import FusionEventConfig
from fusion.server.health.config import FusionHealthConfig
from fusion.server.info.config import FusionInfoAPIConfig
from fusion.server.metrics.config import FusionMetricsConfig
from fusion.server.synchronizer.config import FusionSynchronizerConfig

__all__ = [
    "ConfigError",
    "FusionServerConfig",
    "ServerConfig",
    "SharedStoreConfig",
    "StorageConfig",
    "decode_config",
    "load_config",
]

ConfigT = TypeVar("ConfigT", bound="FusionServerConfig")

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    """Where and how the HTTP server listens."""

    host: str = "127.0.0.1"
    port: Port = 8080
    # Request bodies above this many bytes are refused with 413.
    max_body_size: Annotated[int, msgspec.Meta(gt=0)] = 1024 * 1024
    # Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For
    # is believed; everyone else's is ignored, so throttling and the audit
    # log see the real peer.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    access_log: bool = True
    # Seconds a request body may take to arrive before a 408 (a JSON body as a
    # whole, an upload per chunk), so a slow or stalled client cannot hold a
    # connection and a handler forever.
    body_timeout: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_BODY_TIMEOUT
    # Seconds a connection may stay idle, or take to send its request line and
    # headers, before it is closed.
    keepalive_timeout: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    # Open connections at most; more are closed at once. Keep it below the
    # process's file descriptor limit (ulimit -n).
    max_connections: Annotated[int, msgspec.Meta(gt=0)] = 900
    # Open connections at most from one client address (the TCP peer: the
    # connections of trusted_proxies count only towards max_connections).
    max_connections_per_address: Annotated[int, msgspec.Meta(gt=0)] = 64
    # Seconds to let running requests finish on SIGTERM/SIGINT before they are
    # cancelled.
    shutdown_timeout: Annotated[float, msgspec.Meta(ge=0)] = 10.0

    def __post_init__(self) -> None:
        networks: list[IPNetwork] = []
        for index, value in enumerate(self.trusted_proxies):
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted_proxies[{index}]: {value!r} is not an IP address or network"
                ) from None
        self.__dict__["trusted_proxy_networks"] = tuple(networks)

    @property
    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        """``trusted_proxies`` parsed once."""
        networks: tuple[IPNetwork, ...] = self.__dict__["trusted_proxy_networks"]
        return networks


class SharedStoreConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The shared store: ``memory://`` for one process, ``redis://host:port/db`` for replicas."""

    url: str = "memory://"

    def __post_init__(self) -> None:
        scheme = self.url.partition("://")[0].lower()
        if scheme not in ("memory", "redis", "rediss", "unix"):
            raise ValueError(
                f"unsupported shared store URL {self.url!r}: use memory:// or redis://host:port/db"
            )


class StorageConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the server keeps its data (the SQLite database and service files)."""

    data_dir: str = "fusion-data"

    @property
    def path(self) -> Path:
        return Path(self.data_dir)


class FusionServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Root configuration. An API whose section is absent (null) is not served."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    shared_store: SharedStoreConfig = msgspec.field(default_factory=SharedStoreConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    auth: FusionAuthAPIConfig | None = None
    info: FusionInfoAPIConfig | None = None
    constant: FusionConstantAPIConfig | None = None
    case: FusionCaseAPIConfig | None = None
    event: FusionEventConfig | None = None
    download: FusionDownloadConfig | None = None
    # Read by the service's synchronizer (see FusionServer.create_synchronizer).
    synchronizer: FusionSynchronizerConfig | None = None
    # Prometheus metrics (the ``metrics`` extra); absent: none collected.
    metrics: FusionMetricsConfig | None = None
    # GET /api/health and /api/ready: served unless set to null.
    health: FusionHealthConfig | None = msgspec.field(default_factory=FusionHealthConfig)
    # CORS for a front-end of another origin: off unless given.
    cors: FusionCORSConfig | None = None


_PATH_RE = re.compile(r"\s*-\s*at\s*`\$([^`]*)`")
_SEGMENT_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _lookup(data: Any, path: str) -> tuple[bool, Any]:
    current = data
    for name, index in _SEGMENT_RE.findall(path):
        try:
            current = current[int(index)] if index else current[name]
        except (KeyError, IndexError, TypeError, ValueError):
            return False, None
    return True, current


def _struct_types_at(config_type: type, path: str) -> list[msgspec.inspect.StructType]:
    """The Structs that may sit at ``path`` (several below a union) of ``config_type``."""
    from msgspec import inspect

    def members(infos: list[inspect.Type]) -> list[inspect.Type]:
        flat: list[inspect.Type] = []
        for info in infos:
            flat.extend(info.types if isinstance(info, inspect.UnionType) else [info])
        return flat

    current: list[inspect.Type] = [inspect.type_info(config_type)]
    for name, index in _SEGMENT_RE.findall(path):
        found: list[inspect.Type] = []
        for info in members(current):
            if index and isinstance(info, inspect.ListType | inspect.SetType):
                found.append(info.item_type)
            elif name and isinstance(info, inspect.StructType):
                found.extend(field.type for field in info.fields if field.encode_name == name)
            elif name and isinstance(info, inspect.DictType):
                found.append(info.value_type)
        current = found
    return [info for info in members(current) if isinstance(info, inspect.StructType)]


def _describe(
    exc: msgspec.ValidationError, data: Any, source: str, config_type: type = FusionServerConfig
) -> str:
    """Rewrite msgspec's ``<reason> - at `$.a.b`` as ``<source>: a.b: <reason> (value <value>)``.

    The one formatter of configuration errors: msgspec's own, and the
    ``<key>: <reason>`` messages of the Structs' ``__post_init__`` checks.
    """
    text = str(exc)
    paths = _PATH_RE.findall(text)
    reason = _PATH_RE.sub("", text).strip()
    # msgspec appends the outer path last when a nested __post_init__ failed.
    path = "".join(reversed(paths))
    unknown = re.match(r"Object contains unknown field `([^`]*)`", reason)
    if unknown:
        name = unknown.group(1)
        known = [
            field.encode_name
            for struct in _struct_types_at(config_type, path)
            for field in struct.fields
        ]
        shown = (path + "." + name).lstrip(".")
        return f"{source}: unknown key {shown!r}{did_you_mean(name, known)}"
    # A Struct's own check may name a key below it ("tls.fingerprint: ...").
    nested = re.match(r"([A-Za-z_][\w.\[\]]*): (.*)$", reason)
    if nested:
        path = f"{path}.{nested.group(1)}"
        reason = nested.group(2)
    found, value = _lookup(data, path)
    parent, _, last = path.rpartition(".")
    tags = [
        str(struct.tag)
        for struct in _struct_types_at(config_type, parent)
        if struct.tag_field == last and struct.tag is not None
    ]
    if tags and reason.startswith("Invalid value"):
        # The tag of a tagged union (a backend's ``type``).
        kind = parent.rpartition(".")[2] or "the"
        return f"{source}: {path.lstrip('.')}: unknown {kind} type {value!r} ({', '.join(tags)})"
    key = path.lstrip(".") or "(top level)"
    message = f"{source}: {key}: {reason}"
    if found and not isinstance(value, dict | list):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        message += f" (value {shown})"
    return message


def decode_config(
    data: Any, config_type: type[ConfigT], *, source: str = "configuration"
) -> ConfigT:
    """Validate builtins (a parsed file) into ``config_type``.

    Environment references are resolved first; errors raise
    :class:`ConfigError` naming the key and the value.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        data = resolve_env_refs(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        # Not strict: values from environment references are strings ("8080").
        return msgspec.convert(data, config_type, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc, data, source, config_type)) from None


def _parse_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if suffix in (".yaml", ".yml"):
            return msgspec.yaml.decode(raw)
        if suffix == ".json":
            return msgspec.json.decode(raw)
        if suffix == ".toml":
            return msgspec.toml.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        # YAML errors span lines; the CLI prints one line.
        detail = " ".join(str(exc).split()).replace('"<byte string>", ', "")
        raise ConfigError(f"{path}: cannot parse: {detail}") from None
    raise ConfigError(f"{path}: unsupported configuration type {suffix!r} (yaml, yml, json, toml)")


@overload
def load_config(path: Path | str) -> FusionServerConfig: ...


@overload
def load_config(path: Path | str, config_type: type[ConfigT]) -> ConfigT: ...


def load_config(
    path: Path | str, config_type: type[FusionServerConfig] = FusionServerConfig
) -> FusionServerConfig:
    """Read a YAML, JSON or TOML file into ``config_type``.

    Raises :class:`ConfigError` with a one-line message naming the file, the
    bad key and its value.
    """
    path = Path(path)
    return decode_config(_parse_file(path), config_type, source=str(path))
