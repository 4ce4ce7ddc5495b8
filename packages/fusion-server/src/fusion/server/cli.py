"""The ``fusion-server`` command: serve, hash-password, check-config."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusion.helper.logging import setup_logging
from fusion.server.__about__ import __version__
from fusion.server.app import FusionServer
from fusion.server.auth.basic import hash_password
from fusion.server.config import ConfigError, FusionServerConfig, decode_config, load_config

__all__ = ["embedded_config", "main"]

_LOGGER = logging.getLogger("fusion.server.cli")

ADMIN_PASSWORD_ENV = "FUSION_ADMIN_PASSWORD"  # noqa: S105 - a variable name
_ADMIN_HASH_FILE = "admin.hash"
_EXIT_CONFIG = 2
_EXIT_RUNTIME = 1


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


def embedded_config(data_dir: Path) -> FusionServerConfig:
    """The configuration of ``fusion-server serve`` without ``--config``.

    memory:// store, SQLite in ``data_dir``, basic auth with one ``admin``
    (group ``admins``, who may delete), info, constant (``data_dir/constant.yml``),
    case, event and download APIs.
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
    return decode_config(data, FusionServerConfig, source="embedded defaults")


def _summary(config: FusionServerConfig) -> str:
    apis = [
        name
        for name in ("auth", "info", "constant", "case")
        if getattr(config, name, None) is not None
    ]
    # Sections that services or later APIs add (events, downloads...) too.
    apis += [
        name
        for name in config.__struct_fields__
        if name not in ("server", "shared_store", "storage", "auth", "info", "constant", "case")
        and getattr(config, name) is not None
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
    return "; ".join(parts)


def _serve(args: argparse.Namespace) -> int:
    if args.config is not None:
        config: FusionServerConfig = load_config(args.config)
        if args.data_dir is not None:
            config.storage.data_dir = str(args.data_dir)
    else:
        config = embedded_config(Path(args.data_dir or "fusion-data"))
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    try:
        # FUSION_LOG_LEVEL / FUSION_LOG_FORMAT (text or json) / FUSION_LOG_FILE.
        log_handler = setup_logging()
    except (ValueError, OSError) as exc:
        raise CommandError(f"logging: {exc}", _EXIT_CONFIG) from None
    _LOGGER.info("fusion-server %s on http://%s:%d (%s)", __version__, host, port, _summary(config))
    try:
        FusionServer(config).run(host=host, port=port)
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


def _check_config(args: argparse.Namespace) -> int:
    config: FusionServerConfig = load_config(args.file)
    server = config.server
    print(f"{args.file}: ok: listen {server.host}:{server.port}; {_summary(config)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion-server", description="Run and manage a Fusion case-management service."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the APIs (embedded defaults without --config)")
    serve.add_argument("--config", type=Path, help="configuration file (YAML, JSON or TOML)")
    serve.add_argument("--host", help="address to listen on (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    serve.add_argument(
        "--data-dir", type=Path, help="data directory (default ./fusion-data without --config)"
    )
    serve.set_defaults(run=_serve)
    hashing = commands.add_parser(
        "hash-password", help="print the argon2id hash of a password read from stdin or a prompt"
    )
    hashing.set_defaults(run=_hash_password)
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_check_config)
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
