"""Sample triage: a whole Fusion service in one file (docs/tutorial.md builds it).

Analysts upload suspicious samples to a case; a worker process analyses each
one and reports every step as a case event; anyone who may read the case can
fetch a sample back through a one-time download.

Serve it (one process per replica, every replica on the same Redis)::

    cd examples && fusion-server serve --app triage_service:create_app --config triage.yml

Analyse a sample from a worker process (no web application in it)::

    python triage_service.py analyze --config triage.yml CASE_GUID SHA256
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from pathlib import Path
from uuid import UUID

import msgspec
from aiohttp import web

from fusion.concept import Case, Concept, Constant
from fusion.helper import FusionHTTPError, json_response
from fusion.helper.filesystem import safe_segment
from fusion.server import (
    CASE_API,
    DOWNLOADS,
    EVENTS,
    Action,
    CaseEventPublisher,
    ConceptStorage,
    FusionServer,
    FusionServerConfig,
    SQLiteStorage,
    load_config,
    receive_upload,
)


class TriageCase(Case, kw_only=True):
    """A case, and how urgent its triage is."""

    severity: int = 0


class TriageConstant(Constant, kw_only=True):
    """What clients learn from ``GET /api/constant``."""

    max_sample_size: int = 64 * 1024 * 1024


class TriageSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The service's own section of the configuration: ``triage:``."""

    samples_dir: str = "samples"
    max_sample_size: int = 64 * 1024 * 1024


class TriageConfig(FusionServerConfig, kw_only=True):
    """fusion-server's configuration plus the ``triage`` section."""

    triage: TriageSection = msgspec.field(default_factory=TriageSection)


class SampleFields(msgspec.Struct, kw_only=True):
    """The form fields sent with a sample."""

    tags: list[str] = []
    comment: str = ""


class Sample(Concept, kw_only=True):
    """A stored sample, kept as ``<samples_dir>/<case>/<sha256>/metadata.json``."""

    sha256: str
    filename: str
    size: int
    tags: list[str] = msgspec.field(default_factory=list)
    comment: str = ""


UPLOAD_SAMPLE = Action("upload_sample", change=True)
READ_SAMPLES = Action("read_samples")


class Triage:
    """The service's routes."""

    def __init__(self, config: TriageConfig) -> None:
        self.config = config.triage

    def samples(self, case_guid: UUID) -> ConceptStorage[Sample]:
        return ConceptStorage(Path(self.config.samples_dir) / str(case_guid), Sample)

    async def upload(self, request: web.Request) -> web.Response:
        """``POST /api/triage/{case_guid}/samples``: a file and its fields."""
        case = await request.app[CASE_API].authorize_case(request, UPLOAD_SAMPLE)
        samples = self.samples(case.guid)
        upload = await receive_upload(
            request,
            samples.root / "incoming",
            max_size=self.config.max_sample_size,
            overwrite=True,
            fields=SampleFields,
        )
        sample = Sample(
            sha256=upload.sha256,
            filename=upload.filename or upload.sha256,
            size=upload.size,
            tags=upload.fields.tags,
            comment=upload.fields.comment,
        )
        await samples.write_metadata(sample.sha256, sample)
        upload.path.replace(samples.data_path(sample.sha256))  # same filesystem: a rename
        await request.app[EVENTS].notify("sample_uploaded", case, {"sha256": sample.sha256})
        return json_response(sample)

    async def list_samples(self, request: web.Request) -> web.Response:
        """``GET /api/triage/{case_guid}/samples``."""
        case = await request.app[CASE_API].authorize_case(request, READ_SAMPLES)
        found = await self.samples(case.guid).enumerate_metadata()
        return json_response([sample for _key, sample in found])

    async def download(self, request: web.Request) -> web.Response:
        """``GET /api/triage/{case_guid}/samples/{sha256}/download``: a one-time key."""
        case = await request.app[CASE_API].authorize_case(request, READ_SAMPLES)
        sha256 = safe_segment(request.match_info["sha256"])
        sample = await self.samples(case.guid).read_metadata(sha256)
        if sample is None:
            raise FusionHTTPError(404, f"no sample {sha256} in case {case.guid}")
        path = self.samples(case.guid).data_path(sha256)
        return json_response(await request.app[DOWNLOADS].prepare(path, sample.filename))


def create_app(config: TriageConfig) -> FusionServer:
    """The factory ``fusion-server serve --app triage_service:create_app`` calls."""
    server = FusionServer(config, case_type=TriageCase, constant_type=TriageConstant)
    triage = Triage(config)
    base = "/api/triage/{case_guid}/samples"
    server.add_routes(
        [
            web.post(base, triage.upload),
            web.get(base, triage.list_samples),
            web.get(base + "/{sha256}/download", triage.download),
        ]
    )
    return server


STEPS = ("hashing", "strings", "verdict")


async def analyze(config: TriageConfig, case_guid: UUID, sha256: str) -> None:
    """The worker: one case event per analysis step, seen by every replica."""
    storage = SQLiteStorage(config.storage.path, case_type=TriageCase)
    await storage.startup()
    try:
        case = await storage.retrieve_case(case_guid)
    finally:
        await storage.shutdown()
    if case is None:
        raise SystemExit(f"no case {case_guid}")
    data = Triage(config).samples(case_guid).data_path(sha256).read_bytes()
    async with CaseEventPublisher.from_config(config) as events:
        for step in STEPS:
            result = hashlib.sha256(data).hexdigest() == sha256 if step == "hashing" else "done"
            await events.notify("analysis", case, {"sha256": sha256, "step": step, "ok": result})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="triage_service.py")
    parser.add_argument("command", choices=["analyze"])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("case_guid", type=UUID)
    parser.add_argument("sha256")
    args = parser.parse_args(argv)
    asyncio.run(analyze(load_config(args.config, TriageConfig), args.case_guid, args.sha256))
    return 0


if __name__ == "__main__":
    sys.exit(main())
