"""A timeline service built on Fusion: its own case, constant, route and main.

Run it with ``python examples/timeline_service.py --config timeline.yml``
(the configuration of ``fusion-server``, with its own ``constant`` file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aiohttp import web

from fusion.concept import Case, Constant, Priority
from fusion.helper.http_envelope import FusionHTTPError, json_response
from fusion.helper.http_request import get_guid
from fusion.server import AUTH, STORAGE, Action, ConfigError, FusionServer, load_config


class TimelineCase(Case, kw_only=True):
    """A case with the priority of its timeline analysis."""

    priority: Priority = Priority.LOW


class TimelineConstant(Constant, kw_only=True):
    """What the service tells its clients: how many events a timeline shows at most."""

    max_events: int = 1000


READ_TIMELINE = Action("read_timeline")


async def timeline(request: web.Request) -> web.Response:
    """``GET /api/timeline/{case_guid}``: the case's life as a list of dated events."""
    case_guid = get_guid(request)
    case = await request.app[STORAGE].retrieve_case(case_guid)
    if not isinstance(case, TimelineCase):
        raise FusionHTTPError(404, f"case {case_guid} not found")
    await request.app[AUTH].authorize(request, READ_TIMELINE, case)
    events = [{"time": case.created.isoformat(), "event": "created"}]
    if case.updated is not None:
        events.append({"time": case.updated.isoformat(), "event": "updated"})
    if case.closed is not None:
        events.append({"time": case.closed.isoformat(), "event": "closed"})
    return json_response({"case": case, "priority": case.priority, "events": events})


def build_server(config_path: str) -> FusionServer:
    server = FusionServer(
        load_config(config_path), case_type=TimelineCase, constant_type=TimelineConstant
    )
    server.add_routes([web.get("/api/timeline/{case_guid}", timeline)])
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="timeline-service")
    parser.add_argument("--config", required=True)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    try:
        server = build_server(args.config)
    except ConfigError as exc:
        print(f"timeline-service: error: {exc}", file=sys.stderr)
        return 2
    server.run(host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
