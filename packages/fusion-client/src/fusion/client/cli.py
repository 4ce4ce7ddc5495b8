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
import importlib
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, cast
from uuid import UUID

import msgspec
from yarl import URL

from fusion.client.__about__ import __version__
from fusion.client.api import FusionAuthAPIClient, FusionInfoAPIClient, case_guid_str
from fusion.client.client import FusionClient
from fusion.client.config import FusionClientConfig, FusionClientTimeoutConfig
from fusion.client.download import FusionDownloadAPIClient
from fusion.client.errors import FusionAPIError, FusionClientError, FusionConnectionError
from fusion.client.profiles import (
    Profile,
    ProfileError,
    check_name,
    config_dir,
    config_file,
    load_profiles,
    load_session,
    normalised_url,
    private_dir,
    profile_session_file,
    save_profiles,
)
from fusion.concept import Case, ConceptError, PendingDownloadKey, utcnow
from fusion.helper.config import TLSConfig

if TYPE_CHECKING:
    from fusion.client.cli_render import ProgressBar

__all__ = [
    "EXIT_API_ERROR",
    "EXIT_AUTH_ERROR",
    "EXIT_CONNECTION_ERROR",
    "EXIT_FILE_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "load_case_type",
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


# -- sessions and profiles ------------------------------------------------


def session_file(api_url: str) -> Path:
    """The file keeping the session cookie of one server used with ``--url`` alone."""
    normalised = api_url.rstrip("/") + "/"
    digest = hashlib.sha256(normalised.encode()).hexdigest()[:32]
    return config_dir() / "sessions" / f"{digest}.json"


def load_case_type(reference: str) -> type[Case]:
    """The Case subclass named ``package.module:Class`` (modules of the current directory too)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--case-type {reference!r}: expected package.module:Class")
    # Like ``python -m``: modules of the current directory are found.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"--case-type {reference}: cannot import {module_name} ({type(exc).__name__}: {exc})"
        ) from None
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise UsageError(f"--case-type {reference}: {module_name} has no {name!r}")
        target = getattr(target, name)
    if not (isinstance(target, type) and issubclass(target, Case)):
        raise UsageError(f"--case-type {reference}: not a subclass of fusion.concept.Case")
    return target


# -- what the commands share ----------------------------------------------

_JSON = msgspec.json.Encoder(order="deterministic")


def _print_json(data: Any, out: IO[str] | None = None) -> None:
    # sys.stdout when called, not when imported: a redirected stdout gets it.
    (out or sys.stdout).write(msgspec.json.format(_JSON.encode(data), indent=2).decode() + "\n")


@dataclass
class Context:
    """One run of a command: the client, the options, the service's case type."""

    client: FusionClient
    args: argparse.Namespace
    case_type: type[Case] = Case

    def case(self, raw: Any) -> dict[str, Any]:
        """A case answered by the server, validated as ``case_type``, every field kept.

        The typed fields come first (normalised by the type), then the fields
        the type does not know, as the server sent them: never dropped.
        """
        if not isinstance(raw, dict):
            raise FusionClientError("invalid case from the server: expected an object")
        try:
            typed = self.case_type.from_dict(raw)
        except ConceptError as exc:
            raise FusionClientError(f"invalid case from the server: {exc}") from None
        shown = typed.to_dict()
        shown.update({key: value for key, value in raw.items() if key not in shown})
        return shown

    async def case_guid(self, text: str) -> str:
        """A full case GUID, or a prefix of exactly one of the caller's cases (like git)."""
        try:
            return case_guid_str(text)
        except ValueError:
            return await self._guid_of_prefix(text)

    async def _guid_of_prefix(self, text: str) -> str:
        prefix = text.strip().lower()
        if not re.fullmatch(r"[0-9a-f][0-9a-f-]{3,35}", prefix):
            raise UsageError(
                f"invalid case GUID {text!r}: give a GUID or its first 4 characters or more"
            )
        cases = await self.client.request("GET", "/api/cases") or []
        matches = [
            case for case in cases if isinstance(case, dict)
            and str(case.get("guid", "")).startswith(prefix)
        ]  # fmt: skip
        if not matches:
            raise UsageError(f"no case of yours starts with {text!r}: see '{PROG} cases list'")
        if len(matches) > 1:
            listed = ", ".join(f"{case['guid']} ({case.get('name', '')})" for case in matches)
            raise UsageError(
                f"{text!r} matches {len(matches)} cases, give more characters: {listed}"
            )
        return str(matches[0]["guid"])


Command = Callable[[Context], Awaitable[None]]
LocalCommand = Callable[[argparse.Namespace], None]


def _pairs(values: Sequence[str] | None, option: str) -> list[tuple[str, str]]:
    """``name=value`` options, in order (a name may repeat: ``--param tag=a --param tag=b``)."""
    found: list[tuple[str, str]] = []
    for item in values or ():
        key, equal, text = item.partition("=")
        if not equal or not key.strip():
            raise UsageError(f"{option} {item!r}: expected name=value")
        found.append((key.strip(), text))
    return found


def _assignments(values: Sequence[str] | None, option: str, *, as_json: bool) -> dict[str, Any]:
    """``name=value`` options; with ``as_json`` a value is JSON when it parses, else text."""
    found: dict[str, Any] = {}
    for key, text in _pairs(values, option):
        value: Any = text
        if as_json:
            try:
                value = msgspec.json.decode(text)
            except msgspec.DecodeError:
                value = text
        found[key] = value
    return found


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[ProgressBar | None]:
    """A progress bar on stderr when it is a terminal and not ``--quiet``, else ``None``.

    Its line is ended however the transfer ends, so an error never lands on the bar.
    """
    from fusion.client.cli_render import ProgressBar

    if quiet or not sys.stderr.isatty():
        yield None
        return
    bar = ProgressBar(sys.stderr, label)
    try:
        yield bar
    except BaseException:
        bar.abort()
        raise
    bar.done()


# -- commands -------------------------------------------------------------


async def cmd_info(ctx: Context) -> None:
    info = await FusionInfoAPIClient(ctx.client).info()
    if ctx.args.json:
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


async def cmd_login(ctx: Context) -> None:
    args = ctx.args
    auth = FusionAuthAPIClient(ctx.client)
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
        if exc.status == 429:
            raise AuthError("too many failed logins: wait a while, then log in again") from None
        if exc.status in (400, 401, 403):
            detail = "" if "login refused" in exc.message.lower() else f" ({exc.message})"
            raise AuthError(f"login refused{detail}: check the username and password") from None
        raise
    if args.json:
        _print_json(identity)
    else:
        groups = ", ".join(sorted(identity.groups)) or "no groups"
        print(f"logged in as {identity.username} ({groups})")


async def cmd_logout(ctx: Context) -> None:
    # The session file goes away with the cookie, even when the server had
    # already dropped the session (401).
    await FusionAuthAPIClient(ctx.client).logout()
    if not ctx.args.json:
        print("logged out")


async def cmd_whoami(ctx: Context) -> None:
    identity = await FusionAuthAPIClient(ctx.client).is_logged()
    if identity is None:
        raise AuthError(f"not logged in: run '{PROG} login' or pass --api-key")
    if ctx.args.json:
        _print_json(identity)
    else:
        print(f"{identity.username} ({', '.join(sorted(identity.groups)) or 'no groups'})")


async def cmd_cases_list(ctx: Context) -> None:
    from fusion.client.cli_render import case_table, terminal_width

    cases = [ctx.case(raw) for raw in await ctx.client.request("GET", "/api/cases") or []]
    if ctx.args.json:
        _print_json(cases)
    elif cases:
        print(case_table(cases, width=terminal_width(sys.stdout)))
    else:
        print("no cases")


def _show_case(ctx: Context, raw: Any) -> None:
    from fusion.client.cli_render import case_details

    case = ctx.case(raw)
    if ctx.args.json:
        _print_json(case)
    else:
        print(case_details(case))


async def cmd_cases_get(ctx: Context) -> None:
    guid = await ctx.case_guid(ctx.args.guid)
    _show_case(ctx, await ctx.client.request("GET", f"/api/case/{guid}"))


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return sorted({item.strip() for value in values for item in value.split(",") if item.strip()})


def _case_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = _assignments(args.set, "--set", as_json=True)
    for name in ("name", "description", "tsid"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    for name in ("acs", "acs_ro", "webhooks"):
        values = _split(getattr(args, name))
        if values is not None:
            fields[name] = values
    return fields


async def cmd_cases_create(ctx: Context) -> None:
    _show_case(ctx, await ctx.client.request("POST", "/api/case", json=_case_fields(ctx.args)))


async def cmd_cases_update(ctx: Context) -> None:
    args = ctx.args
    changes = _case_fields(args)
    if args.close:
        changes["closed"] = utcnow()
    elif args.reopen:
        changes["closed"] = None
    if not changes:
        raise UsageError("nothing to update: give --set field=value or another field option")
    guid = await ctx.case_guid(args.guid)
    _show_case(ctx, await ctx.client.request("PUT", f"/api/case/{guid}", json=changes))


async def cmd_cases_delete(ctx: Context) -> None:
    guid = await ctx.case_guid(ctx.args.guid)
    await ctx.client.request("DELETE", f"/api/case/{guid}")
    if not ctx.args.json:
        print(f"deleted {guid}")


def _download_reference(value: str) -> PendingDownloadKey | str:
    # "GUID/TOKEN" as printed by services; URLs and /api/download/... paths pass through.
    guid, slash, token = value.partition("/")
    if slash and token and "/" not in token:
        try:
            return PendingDownloadKey(guid=UUID(guid), token=token)
        except ValueError:
            pass
    return value


async def _download(ctx: Context, reference: PendingDownloadKey | str, output: str | None) -> Path:
    destination = Path(output) if output else Path.cwd()
    with _progress("download", ctx.args.quiet) as bar:
        path = await FusionDownloadAPIClient(ctx.client).download(
            reference, destination, on_progress=bar
        )
    if ctx.args.json:
        _print_json({"path": str(path)})
    else:
        print(path)
    return path


async def cmd_download(ctx: Context) -> None:
    await _download(ctx, _download_reference(ctx.args.key_or_url), ctx.args.output)


async def cmd_events(ctx: Context) -> None:
    from fusion.client.cli_render import event_line, terminal_width
    from fusion.client.event import FusionEventAPIClient

    guid = await ctx.case_guid(ctx.args.guid)
    events = FusionEventAPIClient(ctx.client)
    seen: dict[str, dict[str, Any]] = {}
    # Cases decoded as plain objects, then validated by ctx.case: unknown fields stay.
    raw_case = cast("type[Case]", dict)
    async for event in events.subscribe(guid, raw_case, last_event_id=ctx.args.last_event_id):
        case = ctx.case(event.case)
        data = {"source": event.source, "category": event.category, "case": case, "ext": event.ext}
        if ctx.args.json:
            line = _JSON.encode(data).decode()
        else:
            key = str(case.get("guid"))
            line = event_line(
                data,
                case,
                seen.get(key),
                when=datetime.now().astimezone(),
                width=terminal_width(sys.stdout),
            )
            seen[key] = case
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _json_body(text: str) -> Any:
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise UsageError(f"--json: not valid JSON ({exc})") from None


def _file_part(value: str) -> tuple[str, Path]:
    part, equal, path = value.partition("=")
    if not equal or not part or not path.startswith("@") or len(path) < 2:
        raise UsageError(f"--file {value!r}: expected part=@path")
    return part, Path(path[1:])


def _print_data(ctx: Context, data: Any) -> None:
    if data is not None:
        _print_json(data)
    elif not ctx.args.json:
        print("ok")


async def cmd_call(ctx: Context) -> None:
    args = ctx.args
    method = args.method.upper()
    params = _pairs(args.param, "--param")
    fields = _assignments(args.field, "--field", as_json=False)
    if args.file is not None:
        if args.json_body is not None:
            raise UsageError("--json and --file cannot go together: send fields with --field")
        part, path = _file_part(args.file)
        with _progress(path.name, args.quiet) as bar:
            data = await ctx.client.upload(
                args.path, path, field=part, fields=fields, method=method,
                params=params or None, on_progress=bar,
            )  # fmt: skip
    else:
        if fields:
            raise UsageError("--field goes with --file (a multipart upload): use --json instead")
        body = _json_body(args.json_body) if args.json_body is not None else None
        data = await ctx.client.request(method, args.path, json=body, params=params or None)
    if args.download:
        try:
            key = PendingDownloadKey.from_dict(data)
        except ConceptError:
            raise FusionClientError(
                f"{method} {args.path} did not answer a download key (guid, token)"
            ) from None
        await _download(ctx, key, args.output)
        return
    _print_data(ctx, data)


async def cmd_upload(ctx: Context) -> None:
    args = ctx.args
    path = Path(args.file)
    fields = _assignments(args.field, "--field", as_json=False)
    with _progress(path.name, args.quiet) as bar:
        data = await ctx.client.upload(
            args.path, path, field=args.part, fields=fields, on_progress=bar
        )
    _print_data(ctx, data)


# -- local commands (no service) ------------------------------------------


def cmd_profile_add(args: argparse.Namespace) -> None:
    config = load_profiles()
    name = check_name(args.name)
    for url in args.profile_urls:
        FusionClientConfig(api_url=url)  # a clear error now rather than at first use
    if args.case_type is not None:
        load_case_type(args.case_type)
    config.profiles[name] = Profile(
        urls=list(dict.fromkeys(args.profile_urls)),
        api_key=args.profile_api_key,
        case_type=args.case_type,
        ca=args.profile_ca,
        fingerprint=args.profile_fingerprint,
        insecure=args.profile_insecure,
    )
    if args.default or config.default is None:
        config.default = name
    path = save_profiles(config)
    if not args.json:
        print(f"profile {name} saved in {path}")


def cmd_profile_list(args: argparse.Namespace) -> None:
    from fusion.client.cli_render import table, terminal_width

    config = load_profiles()
    if args.json:
        _print_json({"default": config.default, "profiles": config.profiles})
        return
    if not config.profiles:
        print(f"no profiles: add one with '{PROG} profile add NAME --url URL'")
        return
    rows = [
        (
            ("* " if name == config.default else "  ") + name,
            " ".join(profile.urls),
            "api key" if profile.api_key else "session",
            profile.case_type or "-",
        )
        for name, profile in sorted(config.profiles.items())
    ]
    headers = ("  NAME", "URLS", "AUTH", "CASE TYPE")
    print(table(rows, headers, width=terminal_width(sys.stdout), shrink=(1, 3)))


def cmd_profile_remove(args: argparse.Namespace) -> None:
    config = load_profiles()
    if config.profiles.pop(args.name, None) is None:
        raise UsageError(f"no profile {args.name!r}: see '{PROG} profile list'")
    if config.default == args.name:
        config.default = next(iter(sorted(config.profiles)), None)
    save_profiles(config)
    profile_session_file(args.name).unlink(missing_ok=True)
    if not args.json:
        print(f"profile {args.name} removed")


def cmd_completion(args: argparse.Namespace) -> None:
    from fusion.client.cli_completion import completion_script

    sys.stdout.write(completion_script(args.shell, PROG, build_parser()))


# -- parser and main ------------------------------------------------------


def _case_options(sub: argparse.ArgumentParser, *, create: bool) -> None:
    sub.add_argument("--name", required=create)
    sub.add_argument("--description")
    sub.add_argument("--tsid")
    sub.add_argument("--acs", action="append", help="who may change (repeat or a,b)")
    sub.add_argument("--acs-ro", action="append", help="who may only read")
    sub.add_argument("--webhooks", action="append", help="webhook URLs")
    sub.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="any field, the service's own too; VALUE is JSON when it parses, else text",
    )


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
    parser.add_argument(
        "-p", "--profile", help="a saved service (see 'profile add'; default: $FUSION_PROFILE)"
    )
    parser.add_argument("--url", help="service URL (default: the profile's, else $FUSION_URL)")
    parser.add_argument("--api-key", help="robot API key (default: $FUSION_API_KEY)")
    parser.add_argument(
        "--case-type",
        metavar="MODULE:CLASS",
        help="the service's Case subclass (default: the profile's, else fusion.concept.Case)",
    )
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
    guid_help = "a case GUID, or its first characters (4 at least)"
    get = case_commands.add_parser("get", help="one case")
    get.add_argument("guid", metavar="CASE", help=guid_help)
    get.set_defaults(run=cmd_cases_get)
    create = case_commands.add_parser("create", help="a new case")
    _case_options(create, create=True)
    create.set_defaults(run=cmd_cases_create)
    update = case_commands.add_parser("update", help="change a case")
    update.add_argument("guid", metavar="CASE", help=guid_help)
    _case_options(update, create=False)
    state = update.add_mutually_exclusive_group()
    state.add_argument("--close", action="store_true", help="close the case")
    state.add_argument("--reopen", action="store_true", help='reopen it ("closed": null)')
    update.set_defaults(run=cmd_cases_update)
    delete = case_commands.add_parser("delete", help="delete a case")
    delete.add_argument("guid", metavar="CASE", help=guid_help)
    delete.set_defaults(run=cmd_cases_delete)

    download = commands.add_parser("download", help="fetch a one-time download")
    download.add_argument("key_or_url", metavar="KEY_OR_URL", help="URL, path or GUID/TOKEN")
    download.add_argument("-o", "--output", help="file or directory (default: here)")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    download.set_defaults(run=cmd_download)

    upload = commands.add_parser("upload", help="send a file to a service's upload route")
    upload.add_argument("path", metavar="PATH", help="the route, e.g. /api/triage/GUID/samples")
    upload.add_argument("file", metavar="FILE")
    upload.add_argument("--field", action="append", metavar="NAME=VALUE", help="a form field")
    upload.add_argument("--part", default="file", help="the file's form part (default: file)")
    upload.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    upload.set_defaults(run=cmd_upload)

    call = commands.add_parser("call", help="call one of the service's own routes")
    call.add_argument("method", metavar="METHOD", help="GET, POST, PUT, DELETE...")
    call.add_argument("path", metavar="PATH", help="the route, e.g. /api/triage/GUID/samples")
    call.add_argument("--json", dest="json_body", metavar="BODY", help="JSON body (or @file)")
    call.add_argument("--param", action="append", metavar="NAME=VALUE", help="query parameter")
    call.add_argument("--file", metavar="PART=@PATH", help="upload a file as this form part")
    call.add_argument("--field", action="append", metavar="NAME=VALUE", help="form field (--file)")
    call.add_argument(
        "--download", action="store_true", help="the route answers a download key: fetch it"
    )
    call.add_argument("-o", "--output", help="with --download: file or directory")
    call.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    call.set_defaults(run=cmd_call)

    events = commands.add_parser("events", help="follow a case's events")
    events.add_argument("guid", metavar="CASE", help=guid_help)
    events.add_argument("--last-event-id", help="resume after this event id")
    events.set_defaults(run=cmd_events)

    profile = commands.add_parser("profile", help="saved services: add, list, remove")
    profile_commands = profile.add_subparsers(
        dest="profile_command", metavar="ACTION", required=True
    )
    add = profile_commands.add_parser("add", help="save (or replace) a profile")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--url", dest="profile_urls", action="append", required=True,
        help="a URL of the service (repeat for each replica)",
    )  # fmt: skip
    add.add_argument("--api-key", dest="profile_api_key", help="robot API key")
    add.add_argument("--case-type", metavar="MODULE:CLASS", help="the service's Case subclass")
    add.add_argument("--ca", dest="profile_ca", metavar="FILE", help="CA certificates (PEM)")
    add.add_argument("--fingerprint", dest="profile_fingerprint", metavar="SHA256")
    add.add_argument("--insecure", dest="profile_insecure", action="store_true")
    add.add_argument("--default", action="store_true", help="use it when no profile is named")
    add.set_defaults(local=cmd_profile_add)
    profile_commands.add_parser("list", help="saved profiles").set_defaults(local=cmd_profile_list)
    remove = profile_commands.add_parser("remove", help="forget a profile and its session")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(local=cmd_profile_remove)

    completion = commands.add_parser("completion", help="shell completion script")
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(local=cmd_completion)
    return parser


@dataclass
class _Target:
    """Where a run goes: the client's config, the profile's URLs, session file, case type."""

    config: FusionClientConfig
    session: Path
    urls: list[str]
    case_type: str | None
    profile: str | None


def _profile(args: argparse.Namespace) -> tuple[str, Profile] | None:
    name = args.profile or os.environ.get("FUSION_PROFILE") or None
    config = load_profiles()
    if name is None:
        if args.url or os.environ.get("FUSION_URL") or config.default is None:
            return None
        name = config.default
    found = config.profiles.get(name)
    if found is None:
        known = ", ".join(sorted(config.profiles)) or "none yet"
        raise UsageError(
            f"no profile {name!r} in {config_file()} (profiles: {known}):"
            f" add it with '{PROG} profile add {name} --url URL'"
        )
    return name, found


def _target(args: argparse.Namespace) -> _Target:
    chosen = _profile(args)
    profile = chosen[1] if chosen is not None else Profile(urls=[])
    url = args.url or (profile.urls[0] if profile.urls else os.environ.get("FUSION_URL"))
    if not url:
        raise UsageError("no service URL: pass --url, set FUSION_URL or add a profile")
    if chosen is not None and normalised_url(url) not in map(normalised_url, profile.urls):
        # The profile's session goes to its own URLs only.
        raise UsageError(
            f"{url} is not a URL of profile {chosen[0]}: add it with"
            f" '{PROG} profile add {chosen[0]} --url ...' (every URL again)"
        )
    ssl: TLSConfig | bool | str = True
    if args.insecure or (profile.insecure and not (args.ca or args.fingerprint)):
        ssl = False
    elif args.ca or profile.ca:
        ssl = TLSConfig(ca_file=args.ca or profile.ca)
    elif args.fingerprint or profile.fingerprint:
        ssl = str(args.fingerprint or profile.fingerprint)
    timeout = FusionClientTimeoutConfig(
        total=args.timeout, connect=min(args.timeout, 10.0), sock_read=args.timeout
    )
    session = profile_session_file(chosen[0]) if chosen is not None else session_file(url)
    config = FusionClientConfig(
        api_url=url,
        api_key=args.api_key or os.environ.get("FUSION_API_KEY") or profile.api_key or None,
        ssl=ssl,
        timeout=timeout,
        # A profile's session file is the command's (below); a URL's, the client's.
        cookie_jar=None if chosen is not None else str(session),
    )
    return _Target(
        config=config,
        session=session,
        urls=profile.urls or [url],
        case_type=args.case_type or profile.case_type,
        profile=chosen[0] if chosen is not None else None,
    )


async def _run(args: argparse.Namespace) -> None:
    target = _target(args)
    case_type = load_case_type(target.case_type) if target.case_type else Case
    private_dir(target.session.parent)
    if target.profile is None:
        async with FusionClient(target.config) as client:
            context = Context(client, args, case_type)
            await cast(Command, args.run)(context)
            return
    from fusion.client.cookies import FusionCookieJar

    # One jar for the profile's URLs: a session opened through one replica is sent to all.
    jar = FusionCookieJar()
    for url in target.urls:
        jar.add_service_url(url)
    for api_url, name, value, path in load_session(target.session, target.urls):
        cookie: SimpleCookie = SimpleCookie()
        cookie[name] = value
        cookie[name]["path"] = path
        jar.update_cookies(cookie, response_url=URL(api_url))
    client = FusionClient(target.config, cookie_jar=jar)
    context = Context(client, args, case_type)
    async with client:
        try:
            await cast(Command, args.run)(context)
        finally:
            client.save_cookies(target.session)


def _fail(code: int, message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return code


_CLOSED = re.compile(r"case ([0-9a-f-]{36}) is closed")


def _api_failure(exc: FusionAPIError) -> int:
    """One sentence saying what went wrong and what to do."""
    message = exc.message.rstrip(".")
    if exc.status == 401:
        return _fail(EXIT_AUTH_ERROR, f"not logged in: run '{PROG} login' or pass --api-key")
    if exc.status == 403:
        closed = _CLOSED.search(message)
        if closed:
            return _fail(
                EXIT_AUTH_ERROR,
                f"case {closed.group(1)} is closed: reopen it with"
                f" '{PROG} cases update {closed.group(1)[:8]} --reopen', then try again",
            )
        return _fail(EXIT_AUTH_ERROR, f"not allowed: {message}")
    if exc.status == 413:
        return _fail(EXIT_API_ERROR, f"too large for the service ({message}): send less")
    return _fail(EXIT_API_ERROR, f"server answered {exc.status}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (see the module docstring)."""
    from fusion.helper.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        local: LocalCommand | None = getattr(args, "local", None)
        if local is not None:
            local(args)
        else:
            asyncio.run(_run(args))
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (head, grep -m) went away: not an error of ours.
        sys.stderr.close()
        return EXIT_OK
    except (UsageError, ProfileError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except (ValueError, ConceptError, ConfigError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except AuthError as exc:
        return _fail(EXIT_AUTH_ERROR, str(exc))
    except FusionAPIError as exc:
        return _api_failure(exc)
    except FusionConnectionError as exc:
        hint = (
            " (is the service running there? check --url)" if "cannot connect" in str(exc) else ""
        )
        return _fail(EXIT_CONNECTION_ERROR, f"{exc}{hint}")
    except FusionClientError as exc:
        return _fail(EXIT_API_ERROR, str(exc))
    except OSError as exc:
        return _fail(EXIT_FILE_ERROR, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    return EXIT_OK
