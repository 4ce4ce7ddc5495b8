"""Sample triage, a whole Fusion service in one file (docs/tutorial.md builds it).

Serve: ``fusion-server serve --app triage_service:create_app --config triage.yml``;
analyse: ``python triage_service.py analyze --config triage.yml CASE_GUID SHA256``.
"""

import argparse
import asyncio
import hashlib
import re
from pathlib import Path
from uuid import UUID, uuid4

import msgspec
from aiohttp import web

from fusion.concept import Case, Concept, Constant, PendingDownloadKey
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
    operation,
    receive_upload,
)


class TriageCase(Case, kw_only=True):
    severity: int = 0  # how urgent the triage is


class TriageConstant(Constant, kw_only=True):
    max_sample_size: int = 64 * 1024 * 1024  # what GET /api/constant tells clients


class TriageSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    samples_dir: str = "samples"
    max_sample_size: int = 64 * 1024 * 1024


class TriageConfig(FusionServerConfig, kw_only=True):
    triage: TriageSection = msgspec.field(default_factory=TriageSection)


class SampleFields(msgspec.Struct, kw_only=True):  # the form fields sent with a sample
    tags: list[str] = []
    comment: str = ""


class Sample(Concept, kw_only=True):  # <samples_dir>/<case guid>/<sha256>/metadata.json
    sha256: str
    filename: str
    size: int
    fields: SampleFields


class Triage:
    def __init__(self, config: TriageConfig) -> None:
        self.config = config.triage

    def samples(self, case_guid: UUID) -> ConceptStorage[Sample]:
        return ConceptStorage(Path(self.config.samples_dir) / str(case_guid), Sample)

    @operation("Upload a sample and its fields", request=SampleFields, response=Sample, upload=True)
    async def upload(self, request: web.Request) -> web.Response:
        action = Action("upload_sample", change=True)
        case = await request.app[CASE_API].authorize_case(request, action)
        samples = self.samples(case.guid)
        staged = samples.root / ".incoming"  # a name of its own: no clash with another upload
        upload = await receive_upload(
            request, staged, uuid4().hex, max_size=self.config.max_sample_size, fields=SampleFields
        )
        name = upload.filename or upload.sha256
        sample = Sample(sha256=upload.sha256, filename=name, size=upload.size, fields=upload.fields)
        await samples.write_metadata(sample.sha256, sample)
        upload.path.replace(samples.data_path(sample.sha256))  # same filesystem: a rename
        await request.app[EVENTS].notify("sample_uploaded", case, {"sha256": sample.sha256})
        return json_response(sample)

    @operation("The case's samples", response=list[Sample])
    async def list_samples(self, request: web.Request) -> web.Response:
        case = await request.app[CASE_API].authorize_case(request, Action("read_samples"))
        found = await self.samples(case.guid).enumerate_metadata()
        return json_response([sample for _key, sample in found])

    @operation("A one-time download key of a sample", response=PendingDownloadKey)
    async def download(self, request: web.Request) -> web.Response:
        case = await request.app[CASE_API].authorize_case(request, Action("read_samples"))
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
    base = "/api/triage/{case_guid}/samples"  # POST: upload, GET: list
    server.add_routes(
        [
            web.post(base, triage.upload),
            web.get(base, triage.list_samples),
            web.get(base + "/{sha256}/download", triage.download),
        ]
    )
    return server


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
    results = {
        "hashing": hashlib.sha256(data).hexdigest() == sha256,
        "strings": len(re.findall(rb"[ -~]{6,}", data)),
        "verdict": "suspicious" if b"MZ" in data else "clean",
    }
    async with CaseEventPublisher.from_config(config) as events:
        for step, result in results.items():
            await events.notify(
                "analysis", case, {"sha256": sha256, "step": step, "result": result}
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="triage_service.py")
    parser.add_argument("command", choices=["analyze"])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("case_guid", type=UUID)
    parser.add_argument("sha256")
    args = parser.parse_args()
    asyncio.run(analyze(load_config(args.config, TriageConfig), args.case_guid, args.sha256))
