"""The ``fusion-client`` command: Fusion services from a terminal or a script.

Exit codes (stable, scripts may rely on them):

====  ==========================================================
0     success
1     the server answered an error (4xx other than auth, 5xx), or an invalid answer
2     usage error (bad option, missing URL, invalid GUID...)
3     connection error (refused, timed out, TLS refused)
4     authentication error (401/403, login refused, too many login failures)
5     local file error (download destination, session file)
130   interrupted (Ctrl-C)
====  ==========================================================
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn
from uuid import UUID

import msgspec

from fusion.client.__about__ import __version__
from fusion.client.api import (
    FusionAuthAPIClient,
    FusionCaseAPIClient,
    FusionInfoAPIClient,
    case_guid_str,
)
from fusion.client.client import FusionClient
from fusion.client.config import FusionClientConfig, FusionClientTimeoutConfig
from fusion.client.download import FusionDownloadAPIClient
from fusion.client.errors import FusionAPIError, FusionClientError, FusionConnectionError
from fusion.client.event import FusionEventAPIClient
from fusion.concept import Case, ConceptError, PendingDownloadKey, utcnow
from fusion.helper.config import TLSConfig

__all__ = [
    "EXIT_API_ERROR",
    "EXIT_AUTH_ERROR",
    "EXIT_CONNECTION_ERROR",
    "EXIT_FILE_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "main",
    "session_file",
]

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION_ERROR = 3
EXIT_AUTH_ERROR = 4
EXIT_FILE_ERROR = 5
EXIT_INTERRUPTED = 130

PROG = "fusion-client"


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


class AuthError(Exception):
    """Authentication refused: exit code 4."""


class _Parser(argparse.ArgumentParser):
    # One line on stderr instead of argparse's usage block: scripts read the last line.
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see {self.prog} --help)\n")


# -- session storage ------------------------------------------------------


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/fusion-client`` (``~/.config/fusion-client`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fusion-client"


def session_file(api_url: str) -> Path:
    """The file keeping the session cookie of one server (one file per URL)."""
    normalised = api_url.rstrip("/") + "/"
    digest = hashlib.sha256(normalised.encode()).hexdigest()[:32]
    return config_dir() / "sessions" / f"{digest}.json"


def _private_dirs(path: Path) -> None:
    # The session cookie is a credential: only the user may list or read it.
    for directory in (config_dir(), path.parent):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)


# -- output ---------------------------------------------------------------

_JSON = msgspec.json.Encoder(order="deterministic")


def _print_json(data: Any, out: IO[str] | None = None) -> None:
    # sys.stdout when called, not when imported: a redirected stdout gets it.
    (out or sys.stdout).write(msgspec.json.format(_JSON.encode(data), indent=2).decode() + "\n")


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]
    return "\n".join(lines)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def _case_rows(cases: Sequence[Case]) -> str:
    rows = [
        (
            str(case.guid),
            "closed" if case.closed is not None else "open",
            _when(case.created),
            ",".join(sorted(case.acs)) or "-",
            case.name,
        )
        for case in cases
    ]
    return _table(rows, ("GUID", "STATE", "CREATED", "ACS", "NAME"))


def _case_details(case: Case) -> str:
    data = case.to_dict()
    width = max(len(key) for key in data)
    return "\n".join(
        f"{key.ljust(width)}  {', '.join(value) if isinstance(value, list) else value}"
        for key, value in data.items()
    )


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class _ProgressBar:
    """Download progress and transfer rate on stderr, redrawn at most 10 times a second."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.received = 0
        self.total: int | None = None

    def __call__(self, received: int, total: int | None) -> None:
        self.received = received
        self.total = total
        now = time.monotonic()
        if now - self.last_draw < 0.1 and received != total:
            return
        self._draw(now)

    def _draw(self, now: float) -> None:
        received, total = self.received, self.total
        self.last_draw = now
        rate = received / max(now - self.started, 1e-6)
        if total:
            filled = int(30 * received / total)
            line = (
                f"[{'#' * filled}{'.' * (30 - filled)}] {100 * received // total:3d}%"
                f" {_size(received)} / {_size(total)} {_size(rate)}/s"
            )
        else:
            line = f"{_size(received)} {_size(rate)}/s"
        self.out.write(f"\r{line}")
        self.out.flush()

    def done(self, path: Path) -> None:
        now = time.monotonic()
        if self.received != self.total:
            self._draw(now)  # the last chunks of a download of unknown size
        elapsed = max(now - self.started, 1e-6)
        self.out.write(
            f"\n{path}: {_size(self.received)} in {elapsed:.1f} s"
            f" ({_size(self.received / elapsed)}/s)\n"
        )


# -- commands -------------------------------------------------------------

Command = Callable[[FusionClient, argparse.Namespace], Awaitable[None]]


async def cmd_info(client: FusionClient, args: argparse.Namespace) -> None:
    info = await FusionInfoAPIClient(client).info()
    if args.json:
        _print_json(info)
    else:
        print(f"api      {info.api}\nversion  {info.version}")


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ", stream=sys.stderr)
    if not password:
        raise UsageError("empty password")
    return password


async def cmd_login(client: FusionClient, args: argparse.Namespace) -> None:
    auth = FusionAuthAPIClient(client)
    if args.code is not None:
        login = auth.login_code(args.code)
    else:
        username = args.username or os.environ.get("FUSION_USERNAME")
        if not username:
            if args.password_stdin:
                raise UsageError("--password-stdin needs --username (or FUSION_USERNAME)")
            sys.stderr.write("Username: ")
            sys.stderr.flush()
            username = sys.stdin.readline().strip()
        if not username:
            raise UsageError("empty username")
        login = auth.login(username, _read_password(args))
    try:
        identity = await login
    except FusionAPIError as exc:
        # PROTOCOL.md: a refused login is a 400; 429 after too many failures.
        if exc.status in (400, 401, 403, 429):
            raise AuthError(f"login refused: {exc.message}") from None
        raise
    if args.json:
        _print_json(identity)
    else:
        groups = ", ".join(sorted(identity.groups)) or "no groups"
        print(f"logged in as {identity.username} ({groups})")


async def cmd_logout(client: FusionClient, args: argparse.Namespace) -> None:
    # The session file goes away with the cookie when the client closes, even when
    # the server had already dropped the session (401).
    await FusionAuthAPIClient(client).logout()
    if not args.json:
        print("logged out")


async def cmd_whoami(client: FusionClient, args: argparse.Namespace) -> None:
    identity = await FusionAuthAPIClient(client).is_logged()
    if identity is None:
        raise AuthError("not logged in: run 'fusion-client login' or pass --api-key")
    if args.json:
        _print_json(identity)
    else:
        print(f"{identity.username} ({', '.join(sorted(identity.groups)) or 'no groups'})")


async def cmd_cases_list(client: FusionClient, args: argparse.Namespace) -> None:
    cases = await FusionCaseAPIClient(client).enumerate()
    if args.json:
        _print_json(cases)
    elif cases:
        print(_case_rows(cases))
    else:
        print("no cases")


def _show_case(case: Case, args: argparse.Namespace) -> None:
    if args.json:
        _print_json(case)
    else:
        print(_case_details(case))


async def cmd_cases_get(client: FusionClient, args: argparse.Namespace) -> None:
    _show_case(await FusionCaseAPIClient(client).retrieve(args.guid), args)


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return sorted({item.strip() for value in values for item in value.split(",") if item.strip()})


def _case_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("name", "description", "tsid"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    for name in ("acs", "acs_ro", "webhooks"):
        values = _split(getattr(args, name))
        if values is not None:
            fields[name] = values
    return fields


async def cmd_cases_create(client: FusionClient, args: argparse.Namespace) -> None:
    _show_case(await FusionCaseAPIClient(client).create(_case_fields(args)), args)


async def cmd_cases_update(client: FusionClient, args: argparse.Namespace) -> None:
    changes = _case_fields(args)
    if args.close:
        changes["closed"] = utcnow()
    elif args.reopen:
        changes["closed"] = None
    if not changes:
        raise UsageError("nothing to update: give at least one field option")
    _show_case(await FusionCaseAPIClient(client).update(args.guid, changes), args)


async def cmd_cases_delete(client: FusionClient, args: argparse.Namespace) -> None:
    await FusionCaseAPIClient(client).delete(args.guid)
    if not args.json:
        print(f"deleted {case_guid_str(args.guid)}")


def _download_reference(value: str) -> PendingDownloadKey | str:
    # "GUID/TOKEN" as printed by services; URLs and /api/download/... paths pass through.
    guid, slash, token = value.partition("/")
    if slash and token and "/" not in token:
        try:
            return PendingDownloadKey(guid=UUID(guid), token=token)
        except ValueError:
            pass
    return value


async def cmd_download(client: FusionClient, args: argparse.Namespace) -> None:
    destination = Path(args.output) if args.output else Path.cwd()
    progress = None if args.quiet else _ProgressBar(sys.stderr)
    path = await FusionDownloadAPIClient(client).download(
        _download_reference(args.key_or_url), destination, progress=progress
    )
    if progress is not None:
        progress.done(path)
    if args.json:
        _print_json({"path": str(path)})


async def cmd_events(client: FusionClient, args: argparse.Namespace) -> None:
    events = FusionEventAPIClient(client)
    async for event in events.subscribe(args.guid, last_event_id=args.last_event_id):
        sys.stdout.write(event.to_json().decode() + "\n")
        sys.stdout.flush()


# -- parser and main ------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Talk to a Fusion service from a terminal or a script.",
        epilog=(
            "exit codes: 0 ok, 1 API error, 2 usage, 3 connection error,"
            " 4 authentication error, 5 local file error, 130 interrupted"
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--url", help="service URL (default: $FUSION_URL)")
    parser.add_argument("--api-key", help="robot API key (default: $FUSION_API_KEY)")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    tls.add_argument("--ca", metavar="FILE", help="trust the CA certificates in FILE (PEM)")
    tls.add_argument(
        "--fingerprint", metavar="SHA256", help="pin the server certificate (hex SHA-256)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser("info", help="service API and version").set_defaults(run=cmd_info)
    login = commands.add_parser("login", help="log in and keep the session")
    login.add_argument("-u", "--username", help="default: $FUSION_USERNAME, else asked")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.add_argument("--code", help="OIDC authorization code instead of a password")
    login.set_defaults(run=cmd_login)
    commands.add_parser("logout", help="end the session").set_defaults(run=cmd_logout)
    commands.add_parser("whoami", help="who the server sees").set_defaults(run=cmd_whoami)

    cases = commands.add_parser("cases", help="list, show, create, update, delete cases")
    case_commands = cases.add_subparsers(dest="cases_command", metavar="ACTION", required=True)
    case_commands.add_parser("list", help="cases you may read").set_defaults(run=cmd_cases_list)
    get = case_commands.add_parser("get", help="one case")
    get.add_argument("guid")
    get.set_defaults(run=cmd_cases_get)
    create = case_commands.add_parser("create", help="a new case")
    update = case_commands.add_parser("update", help="change a case")
    update.add_argument("guid")
    for sub in (create, update):
        sub.add_argument("--name", required=sub is create)
        sub.add_argument("--description")
        sub.add_argument("--tsid")
        sub.add_argument("--acs", action="append", help="who may change (repeat or a,b)")
        sub.add_argument("--acs-ro", action="append", help="who may only read")
        sub.add_argument("--webhooks", action="append", help="webhook URLs")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--close", action="store_true")
    state.add_argument("--reopen", action="store_true")
    create.set_defaults(run=cmd_cases_create)
    update.set_defaults(run=cmd_cases_update)
    delete = case_commands.add_parser("delete", help="delete a case")
    delete.add_argument("guid")
    delete.set_defaults(run=cmd_cases_delete)

    download = commands.add_parser("download", help="fetch a one-time download")
    download.add_argument("key_or_url", metavar="KEY_OR_URL", help="URL, path or GUID/TOKEN")
    download.add_argument("-o", "--output", help="file or directory (default: here)")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    download.set_defaults(run=cmd_download)

    events = commands.add_parser("events", help="print a case's events as JSON lines")
    events.add_argument("guid", metavar="CASE_GUID")
    events.add_argument("--last-event-id", help="resume after this event id")
    events.set_defaults(run=cmd_events)
    return parser


def _client_config(args: argparse.Namespace) -> FusionClientConfig:
    url = args.url or os.environ.get("FUSION_URL")
    if not url:
        raise UsageError("no service URL: pass --url or set FUSION_URL")
    ssl: TLSConfig | bool | str = True
    if args.insecure:
        ssl = False
    elif args.ca:
        ssl = TLSConfig(ca_file=args.ca)
    elif args.fingerprint:
        ssl = args.fingerprint
    cookies = session_file(url)
    _private_dirs(cookies)
    timeout = FusionClientTimeoutConfig(
        total=args.timeout, connect=min(args.timeout, 10.0), sock_read=args.timeout
    )
    return FusionClientConfig(
        api_url=url,
        api_key=args.api_key or os.environ.get("FUSION_API_KEY") or None,
        ssl=ssl,
        timeout=timeout,
        cookie_jar=str(cookies),
    )


async def _run(args: argparse.Namespace) -> None:
    run: Command = args.run
    async with FusionClient(_client_config(args)) as client:
        await run(client, args)


def _fail(code: int, message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (see the module docstring)."""
    from fusion.helper.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        asyncio.run(_run(args))
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (head, grep -m) went away: not an error of ours.
        sys.stderr.close()
        return EXIT_OK
    except UsageError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except (ValueError, ConceptError, ConfigError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except AuthError as exc:
        return _fail(EXIT_AUTH_ERROR, str(exc))
    except FusionAPIError as exc:
        if exc.status == 401:
            return _fail(
                EXIT_AUTH_ERROR,
                f"not logged in ({exc.message}): run '{PROG} login' or use --api-key",
            )
        if exc.status == 403:
            return _fail(EXIT_AUTH_ERROR, f"not allowed: {exc.message}")
        return _fail(EXIT_API_ERROR, f"server answered {exc.status}: {exc.message}")
    except FusionConnectionError as exc:
        return _fail(EXIT_CONNECTION_ERROR, str(exc))
    except FusionClientError as exc:
        return _fail(EXIT_API_ERROR, str(exc))
    except OSError as exc:
        return _fail(EXIT_FILE_ERROR, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    return EXIT_OK
