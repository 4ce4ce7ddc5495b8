"""The ``fusion-server`` command: serve, hash-password, check-config, migrate-config,
import-data.

``serve`` and ``check-config`` take ``--app package.module:factory``, a
service's factory: given the configuration decoded with the class its first
parameter is annotated with, it returns the :class:`FusionServer` or the
aiohttp application to serve.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import importlib
import inspect
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import msgspec
from aiohttp import web

from fusion.helper.config import did_you_mean
from fusion.helper.logging import setup_logging
from fusion.server.__about__ import __version__
from fusion.server.app import FusionServer, serve_app
from fusion.server.appkeys import STORE
from fusion.server.auth.basic import hash_password
from fusion.server.config import (
    ConfigError,
    FusionServerConfig,
    _parse_file,
    decode_config,
    load_config,
)
from fusion.server.import_data import ImportReport, import_cases
from fusion.server.migrate import migrate_config

__all__ = ["embedded_config", "main"]

_LOGGER = logging.getLogger("fusion.server.cli")

ADMIN_PASSWORD_ENV = "FUSION_ADMIN_PASSWORD"  # noqa: S105 - a variable name
_ADMIN_HASH_FILE = "admin.hash"
_EXIT_CONFIG = 2
_EXIT_RUNTIME = 1

ConfigT = TypeVar("ConfigT", bound=FusionServerConfig)
# The sections every FusionServerConfig has that are not APIs.
_BASE_SECTIONS = ("server", "shared_store", "storage")


class CommandError(Exception):
    """A one-line error for the user, with the exit code to leave with."""

    def __init__(self, message: str, exit_code: int = _EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _admin_password_hash(data_dir: Path) -> str:
    """Hash of the admin password: from the environment, else kept in the data dir.

    The generated password is printed once, when it is created; only its
    hash is kept.
    """
    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if password:
        return hash_password(password)
    hash_file = data_dir / _ADMIN_HASH_FILE
    try:
        stored = hash_file.read_text().strip()
    except FileNotFoundError:
        stored = ""
    except OSError as exc:
        raise CommandError(f"cannot read {hash_file}: {exc.strerror or exc}") from None
    if stored:
        return stored
    password = secrets.token_urlsafe(18)
    encoded = hash_password(password)
    try:
        fd = os.open(hash_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(encoded + "\n")
    except OSError as exc:
        raise CommandError(f"cannot write {hash_file}: {exc.strerror or exc}") from None
    print(
        f"fusion-server: generated the password of user 'admin': {password}\n"
        f"fusion-server: it is shown only once; its hash is kept in {hash_file}"
        f" (set ${ADMIN_PASSWORD_ENV} to choose it)",
        file=sys.stderr,
        flush=True,
    )
    return encoded


@overload
def embedded_config(data_dir: Path) -> FusionServerConfig: ...


@overload
def embedded_config(data_dir: Path, config_type: type[ConfigT]) -> ConfigT: ...


def embedded_config(
    data_dir: Path, config_type: type[FusionServerConfig] = FusionServerConfig
) -> FusionServerConfig:
    """The configuration of ``fusion-server serve`` without ``--config``.

    memory:// store, SQLite in ``data_dir``, basic auth with one ``admin``
    (group ``admins``, who may delete), info, constant (``data_dir/constant.yml``),
    case, event and download APIs; decoded into ``config_type`` (a service's
    subclass: its own sections take their defaults).
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(
            f"cannot create data directory {data_dir}: {exc.strerror or exc}"
        ) from None
    data: dict[str, Any] = {
        "shared_store": {"url": "memory://"},
        "storage": {"data_dir": str(data_dir)},
        "auth": {
            "backend": {
                "type": "basic",
                "users": [
                    {
                        "username": "admin",
                        "password_hash": _admin_password_hash(data_dir),
                        "groups": ["admins"],
                    }
                ],
            },
            "can_delete": ["admins"],
        },
        "info": {"api": "fusion", "version": __version__},
        "constant": {"path": str(data_dir / "constant.yml")},
        "case": {},
        # Case webhooks stay refused (no allowed prefix) until a config file allows some.
        "event": {"source": "fusion"},
        "download": {"roots": [str(data_dir)]},
    }
    return decode_config(data, config_type, source="embedded defaults")


def _summary(config: FusionServerConfig) -> str:
    framework = FusionServerConfig.__struct_fields__
    apis = [
        name
        for name in framework
        if name not in _BASE_SECTIONS and getattr(config, name) is not None
    ]
    # A service's own sections (a subclass of FusionServerConfig).
    own = [
        name
        for name in config.__struct_fields__
        if name not in framework and getattr(config, name) is not None
    ]
    parts = [
        f"store {config.shared_store.url}",
        f"data {config.storage.data_dir}",
    ]
    if config.auth is not None:
        backend = config.auth.backend_config
        tag = backend.__struct_config__.tag if backend is not None else None
        parts.append(
            f"auth backend {tag or 'none'}, {len(config.auth.api_keys)} API key(s), "
            f"federation key {'yes' if config.auth.federation is not None else 'no'}"
        )
    parts.append("APIs: " + (", ".join(apis) or "none"))
    if own:
        parts.append("service sections: " + ", ".join(own))
    return "; ".join(parts)


def _kind(value: object) -> str:
    """What a value is, for an error message: ``None``, ``a dict``, ``a coroutine``."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


@dataclass(frozen=True)
class _AppFactory:
    """The service factory named by ``--app package.module:factory``."""

    reference: str
    factory: Callable[[Any], object]
    config_type: type[FusionServerConfig]

    @classmethod
    def load(cls, reference: str) -> _AppFactory:
        """Import the factory and find its configuration class (CommandError, exit 2)."""

        def error(message: str) -> CommandError:
            return CommandError(f"--app {reference}: {message}", _EXIT_CONFIG)

        module_name, _, attribute = reference.partition(":")
        if not module_name or not attribute or any(not part for part in attribute.split(".")):
            raise CommandError(
                f"--app {reference!r}: expected package.module:factory", _EXIT_CONFIG
            )
        # Like ``python -m``: modules of the current directory are found, even
        # from the console script (whose sys.path does not have it).
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        try:
            target: object = importlib.import_module(module_name)
        except Exception as exc:
            raise error(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
        for index, name in enumerate(attribute.split(".")):
            if not hasattr(target, name):
                owner = ".".join([module_name, *attribute.split(".")[:index]])
                known = [known for known in dir(target) if not known.startswith("_")]
                raise error(f"{owner} has no attribute {name!r}{did_you_mean(name, known)}")
            target = getattr(target, name)
        if not callable(target):
            raise error(f"{attribute} is {_kind(target)}, not a callable")
        return cls(reference, target, cls._config_type(target, error))

    @staticmethod
    def _config_type(
        factory: Callable[..., object], error: Callable[[str], CommandError]
    ) -> type[FusionServerConfig]:
        """The annotation of the factory's first parameter; FusionServerConfig without one."""
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):
            return FusionServerConfig  # a builtin: nothing to inspect
        try:
            signature.bind(None)
        except TypeError:
            raise error(
                f"the factory must take the configuration as its one argument"
                f" (its signature is {signature})"
            ) from None
        parameter = next(iter(signature.parameters.values()))
        if parameter.annotation is inspect.Parameter.empty:
            return FusionServerConfig
        # Where the annotations are: a class's __init__ (signature() left out
        # ``self``), a partial's function, a callable object's __call__.
        annotated: object = factory
        if inspect.isclass(factory):
            annotated = factory.__init__
        elif isinstance(factory, functools.partial):
            annotated = factory.func
        elif not inspect.isroutine(factory):
            annotated = type(factory).__call__
        try:
            annotation = typing.get_type_hints(annotated).get(parameter.name, FusionServerConfig)
        except Exception as exc:
            raise error(
                f"cannot resolve the factory's annotations: {type(exc).__name__}: {exc}"
            ) from None
        if not (isinstance(annotation, type) and issubclass(annotation, FusionServerConfig)):
            raise error(
                f"the configuration parameter {parameter.name!r} is annotated"
                f" {getattr(annotation, '__name__', annotation)!s},"
                " not a FusionServerConfig subclass"
            )
        return annotation

    def make(self, config: FusionServerConfig) -> FusionServer | web.Application:
        """Call the factory (CommandError, exit 1, when it raises or returns something else)."""
        try:
            made = self.factory(config)
        except Exception as exc:
            _LOGGER.debug("the factory of %s raised", self.reference, exc_info=True)
            raise CommandError(
                f"--app {self.reference}: the factory raised {type(exc).__name__}: {exc}"
            ) from None
        if isinstance(made, FusionServer | web.Application):
            return made
        hint = ""
        if inspect.iscoroutine(made):
            made.close()  # never awaited: no "was never awaited" warning
            hint = " (an async def factory? make it a plain function)"
        raise CommandError(
            f"--app {self.reference}: the factory returned {_kind(made)}{hint},"
            " not a FusionServer or an aiohttp web.Application"
        )


def _read_config(
    file: Path | None, data_dir: Path | None, config_type: type[FusionServerConfig]
) -> FusionServerConfig:
    if file is None:
        return embedded_config(Path(data_dir or "fusion-data"), config_type)
    config = load_config(file, config_type)
    if data_dir is not None:
        config.storage.data_dir = str(data_dir)
    return config


async def _serve_until_stopped(
    app: _AppFactory | None,
    config: FusionServerConfig,
    host: str,
    port: int,
    worker_of: int | None = None,
) -> None:
    made = FusionServer(config) if app is None else app.make(config)
    # A worker of ``--workers N`` shares the port with its siblings.
    reuse_port = worker_of is not None
    if worker_of is not None:
        asyncio.get_running_loop().create_task(_stop_when_orphaned(worker_of))
    if isinstance(made, FusionServer):
        await made.serve(host=host, port=port, reuse_port=reuse_port)
    else:
        await serve_app(made, config.server, host=host, port=port, reuse_port=reuse_port)


_ORPHAN_CHECK = 1.0


async def _stop_when_orphaned(master: int) -> None:
    """A worker whose master is gone (killed) stops as on SIGTERM, instead of living on."""
    while os.getppid() == master:  # noqa: ASYNC110 - no event says the parent died
        await asyncio.sleep(_ORPHAN_CHECK)
    _LOGGER.warning("master process %d is gone: stopping", master)
    os.kill(os.getpid(), signal.SIGTERM)


def _require_metrics(config: FusionServerConfig) -> None:
    """The metrics section needs the extra: a one-line error, before anything starts."""
    if config.metrics is None:
        return
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise CommandError(
            "the metrics section needs prometheus-client: pip install 'fusion-server[metrics]'",
            _EXIT_CONFIG,
        ) from None


def _worker_command(args: argparse.Namespace, host: str, port: int) -> list[str]:
    """The command line of one worker of ``serve --workers N``."""
    command = [sys.executable, "-m", "fusion.server", "serve", "--host", host, "--port", str(port)]
    if args.app is not None:
        command += ["--app", args.app]
    if args.config is not None:
        command += ["--config", str(Path(args.config).absolute())]
    if args.data_dir is not None:
        command += ["--data-dir", str(Path(args.data_dir).absolute())]
    return [*command, "--worker-of", str(os.getpid())]


def _serve_workers(
    args: argparse.Namespace, config: FusionServerConfig, host: str, port: int, named: str
) -> int:
    """The master of ``serve --workers N``: N worker processes on one port (SO_REUSEPORT)."""
    from fusion.server.workers import run_workers

    env = dict(os.environ)
    on_exit: Callable[[int], None] | None = None
    metrics_dir: str | None = None
    if config.metrics is not None:
        from fusion.server.metrics.api import MULTIPROC_DIR_ENV, mark_worker_dead

        # A fresh directory per run: values of an earlier run never add up with these.
        metrics_dir = tempfile.mkdtemp(prefix="fusion-metrics-")
        env[MULTIPROC_DIR_ENV] = metrics_dir
        on_exit = functools.partial(mark_worker_dead, metrics_dir)
    _LOGGER.info(
        "fusion-server %s master (pid %d): %d workers on http://%s:%d%s",
        __version__,
        os.getpid(),
        args.workers,
        host,
        port,
        f" ({named})" if named else "",
    )
    try:
        return run_workers(
            _worker_command(args, host, port),
            args.workers,
            shutdown_timeout=config.server.shutdown_timeout,
            env=env,
            on_exit=on_exit,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(args: argparse.Namespace) -> int:
    app = _AppFactory.load(args.app) if args.app is not None else None
    config = _read_config(
        args.config, args.data_dir, app.config_type if app is not None else FusionServerConfig
    )
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if args.workers > 1 and config.shared_store.url.lower().startswith("memory:"):
        raise CommandError(
            f"--workers {args.workers} needs a shared store for the workers (shared_store.url"
            " redis://...): memory:// lives in one process",
            _EXIT_CONFIG,
        )
    _require_metrics(config)
    try:
        # FUSION_LOG_LEVEL / FUSION_LOG_FORMAT (text or json) / FUSION_LOG_FILE.
        log_handler = setup_logging()
    except (ValueError, OSError) as exc:
        raise CommandError(f"logging: {exc}", _EXIT_CONFIG) from None
    named = f"app {app.reference}" if app is not None else ""
    if args.workers > 1:
        try:
            return _serve_workers(args, config, host, port, named)
        finally:
            log_handler.flush()
    summary = f"{named}; {_summary(config)}" if named else _summary(config)
    if args.worker_of is not None:
        summary += f"; worker pid {os.getpid()} of {args.worker_of}"
    _LOGGER.info("fusion-server %s on http://%s:%d (%s)", __version__, host, port, summary)
    try:
        asyncio.run(_serve_until_stopped(app, config, host, port, args.worker_of))
        _LOGGER.info("fusion-server stopped%s", f" ({named})" if named else "")
    except CommandError:
        raise
    except OSError as exc:
        raise CommandError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    except Exception as exc:
        # A startup failure (storage cannot open its database...): one line
        # for the operator, the traceback only at debug level.
        _LOGGER.debug("startup failed", exc_info=True)
        raise CommandError(f"cannot start: {type(exc).__name__}: {exc}") from None
    finally:
        # Stopped (SIGTERM, SIGINT) or failed: every record queued is written now.
        log_handler.flush()
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise CommandError("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password")
    print(hash_password(password))
    return 0


async def _build(app: _AppFactory, config: FusionServerConfig) -> None:
    """Call the factory and build its application, starting nothing (check-config)."""
    made = app.make(config)
    if not isinstance(made, FusionServer):
        return
    try:
        built = made.build()
    except Exception as exc:
        _LOGGER.debug("building %s failed", app.reference, exc_info=True)
        raise CommandError(
            f"--app {app.reference}: cannot build the application: {type(exc).__name__}: {exc}"
        ) from None
    # Built, never started: the store holds no connection yet, close it anyway.
    await built[STORE].close()


def _check_config(args: argparse.Namespace) -> int:
    app = _AppFactory.load(args.app) if args.app is not None else None
    config = load_config(args.file, app.config_type if app is not None else FusionServerConfig)
    built = ""
    if app is not None:
        asyncio.run(_build(app, config))
        built = f"; app {app.reference} builds"
    server = config.server
    print(f"{args.file}: ok: listen {server.host}:{server.port}; {_summary(config)}{built}")
    return 0


def _migrate_config(args: argparse.Namespace) -> int:
    app = _AppFactory.load(args.app) if args.app is not None else None
    old = _parse_file(args.file)
    if not isinstance(old, dict):
        raise ConfigError(f"{args.file}: expected a mapping at the top level")
    result = migrate_config(old, app.config_type if app is not None else None)
    sys.stdout.write(msgspec.yaml.encode(result.config).decode())
    for key, reason in result.dropped:
        print(f"fusion-server: {args.file}: {key}: dropped: {reason}", file=sys.stderr)
    for key, text in result.notes:
        print(f"fusion-server: {args.file}: {key}: note: {text}", file=sys.stderr)
    for key, reason in result.untranslated:
        print(f"fusion-server: {args.file}: {key}: cannot translate: {reason}", file=sys.stderr)
    return _EXIT_CONFIG if result.untranslated else 0


async def _import_into(
    app: _AppFactory | None, config: FusionServerConfig, old_dir: Path
) -> ImportReport:
    made = FusionServer(config) if app is None else app.make(config)
    if not isinstance(made, FusionServer):
        raise CommandError(
            f"--app {app.reference if app else ''}: import-data needs a factory returning"
            " a FusionServer (its storage and case type)",
            _EXIT_CONFIG,
        )
    storage = made.storage if made.storage is not None else made.create_storage()
    async with storage:
        return await import_cases(old_dir, storage, made.case_type)


def _import_data(args: argparse.Namespace) -> int:
    app = _AppFactory.load(args.app) if args.app is not None else None
    if not args.directory.is_dir():
        raise CommandError(f"{args.directory}: not a directory", _EXIT_CONFIG)
    config_type = app.config_type if app is not None else FusionServerConfig
    # Without --config: the storage serve uses without one (./fusion-data), and
    # nothing else of the embedded defaults (no admin password made here).
    config = (
        load_config(args.config, config_type)
        if args.config is not None
        else decode_config({}, config_type, source="defaults")
    )
    if args.data_dir is not None:
        config.storage.data_dir = str(args.data_dir)
    try:
        report = asyncio.run(_import_into(app, config, args.directory))
    except CommandError:
        raise
    except Exception as exc:
        _LOGGER.debug("import failed", exc_info=True)
        raise CommandError(f"cannot import: {type(exc).__name__}: {exc}") from None
    for name, reason in report.refused:
        print(f"fusion-server: {args.directory / name}: refused: {reason}", file=sys.stderr)
    for guid in report.differs:
        print(
            f"fusion-server: {args.directory / str(guid)}: already present with other"
            " content (the stored case is kept)",
            file=sys.stderr,
        )
    print(f"{args.directory}: {report.summary()}")
    return _EXIT_RUNTIME if report.refused else 0


_APP_HELP = (
    "a service's factory, package.module:factory: a callable given the configuration"
    " (decoded with the FusionServerConfig subclass its first parameter is annotated"
    " with) returning a FusionServer or an aiohttp web.Application. The module is"
    " imported from the current directory (as python -m does) or PYTHONPATH"
)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def _add_worker_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT), restarted when they die;"
        " more than 1 needs a shared store (redis://). Default 1: this process serves",
    )
    # Internal: a worker of --workers N (binds with SO_REUSEPORT, stops with its master).
    serve.add_argument("--worker-of", type=int, metavar="PID", help=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion-server", description="Run and manage a Fusion case-management service."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the APIs, or a service's (--app); embedded defaults without --config",
        description="Serve the generic case-management service, or a service's own (--app).",
    )
    serve.add_argument("--app", metavar="MODULE:FACTORY", help=_APP_HELP)
    serve.add_argument("--config", type=Path, help="configuration file (YAML, JSON or TOML)")
    serve.add_argument("--host", help="address to listen on (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    serve.add_argument(
        "--data-dir", type=Path, help="data directory (default ./fusion-data without --config)"
    )
    _add_worker_arguments(serve)
    serve.set_defaults(run=_serve)
    hashing = commands.add_parser(
        "hash-password", help="print the argon2id hash of a password read from stdin or a prompt"
    )
    hashing.set_defaults(run=_hash_password)
    check = commands.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a configuration file; with --app, with the service's"
        " configuration class, and call its factory to build (never start) its application.",
    )
    check.add_argument("--app", metavar="MODULE:FACTORY", help=_APP_HELP)
    check.add_argument("file", type=Path)
    check.set_defaults(run=_check_config)
    migrate = commands.add_parser(
        "migrate-config",
        help="print the Fusion configuration of an older (edf-fusion) service's file",
        description="Translate an older framework's configuration file into Fusion's"
        " (YAML on stdout). Keys it cannot translate are named on stderr (exit 2);"
        " with --app, the result is validated with the service's configuration class.",
    )
    migrate.add_argument("--app", metavar="MODULE:FACTORY", help=_APP_HELP)
    migrate.add_argument("file", type=Path)
    migrate.set_defaults(run=_migrate_config)
    importing = commands.add_parser(
        "import-data",
        help="import an older service's data directory (<dir>/<guid>/metadata.json)",
        description="Import the cases (and identities) of an older service's storage"
        " directory into the configured storage; idempotent. Exit 1 when a folder is refused.",
    )
    importing.add_argument("--app", metavar="MODULE:FACTORY", help=_APP_HELP)
    importing.add_argument("--config", type=Path, help="configuration file (YAML, JSON or TOML)")
    importing.add_argument(
        "--data-dir", type=Path, help="data directory (default ./fusion-data without --config)"
    )
    importing.add_argument("directory", type=Path, help="the older storage.directory")
    importing.set_defaults(run=_import_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fusion-server``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"fusion-server: error: {exc}", file=sys.stderr)
        return _EXIT_CONFIG
    except CommandError as exc:
        print(f"fusion-server: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
