"""``fusion-server import-data``: an older service's data directory into Fusion's storage.

The older framework's services kept each case as ``<directory>/<guid>/metadata.json``
(the JSON of the service's Case, its own fields included) and the identities
seen in ``<directory>/cache/identities.json`` (``{"identities": [...]}``).
:func:`import_cases` stores every case that is not stored yet, one case per
transaction (a case is stored whole or not at all), and refuses, with the
reason, every folder it cannot import completely: bad JSON, a field of the
wrong type, a GUID that differs from its folder's, a field the case type does
not know (it would be lost; pass the service's factory, whose case type has it).
Running it again imports nothing more. Files of the service beside
``metadata.json`` stay where they are: they are the service's own storage.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec

from fusion.concept import Case, ConceptError, Identity
from fusion.server.storage.base import CaseExistsError, FusionStorage

__all__ = ["IMPORT_METADATA", "ImportReport", "import_cases"]

IMPORT_METADATA = "metadata.json"
_IDENTITIES = Path("cache") / "identities.json"


@dataclass
class ImportReport:
    """What :func:`import_cases` did, folder by folder."""

    imported: list[UUID] = field(default_factory=list)
    present: list[UUID] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    """``(folder or file, reason)``: nothing of it was stored."""
    skipped: list[str] = field(default_factory=list)
    """Entries that are not case folders (a service's other data)."""
    differs: list[UUID] = field(default_factory=list)
    """Present cases whose stored content differs from the file (the stored one is kept)."""
    identities_imported: int = 0
    identities_present: int = 0

    def summary(self) -> str:
        """The one report line."""
        return (
            f"imported {len(self.imported)}, already present {len(self.present)},"
            f" refused {len(self.refused)}, skipped {len(self.skipped)} (not case folders);"
            f" identities: imported {self.identities_imported},"
            f" already present {self.identities_present}"
        )


def _canonical_guid(name: str) -> UUID | None:
    try:
        guid = UUID(name)
    except ValueError:
        return None
    return guid if str(guid) == name else None


def _read_case(folder: Path, guid: UUID, case_type: type[Case]) -> Case:
    """The case of ``folder``; ValueError naming what is wrong."""
    metadata = folder / IMPORT_METADATA
    try:
        raw = metadata.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"no {IMPORT_METADATA}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {IMPORT_METADATA}: {exc.strerror or exc}") from None
    try:
        data = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"{IMPORT_METADATA} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{IMPORT_METADATA} is not a JSON object")
    known = {field.encode_name for field in msgspec.structs.fields(case_type)}
    unknown = sorted(data.keys() - known)
    if unknown:
        raise ValueError(
            f"fields the case type {case_type.__name__} does not know: {', '.join(unknown)}"
            " (they would be lost: pass --app with the service's factory)"
        )
    if data.get("guid") != str(guid):
        raise ValueError(f"its guid {data.get('guid')!r} is not its folder's name")
    try:
        return case_type.from_json(raw)
    except ConceptError as exc:
        raise ValueError(str(exc)) from None


def _comparable(case: Case) -> Any:
    return msgspec.to_builtins(case, order="sorted")


def _read_identities(path: Path) -> list[Identity]:
    try:
        data: Any = msgspec.json.decode(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    items = data.get("identities") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError('expected {"identities": [...]}')
    try:
        return [Identity.from_dict(item) for item in items]
    except ConceptError as exc:
        raise ValueError(str(exc)) from None


async def import_cases(
    directory: Path, storage: FusionStorage[Any], case_type: type[Case] = Case
) -> ImportReport:
    """Import the older layout under ``directory`` into ``storage`` (started)."""
    report = ImportReport()
    entries = await asyncio.to_thread(lambda: sorted(directory.iterdir()))
    for entry in entries:
        guid = _canonical_guid(entry.name)
        if guid is None or not entry.is_dir():
            if entry.name != _IDENTITIES.parts[0]:
                report.skipped.append(entry.name)
            continue
        try:
            case = await asyncio.to_thread(_read_case, entry, guid, case_type)
        except ValueError as exc:
            report.refused.append((entry.name, str(exc)))
            continue
        stored = await storage.retrieve_case(guid)
        if stored is None:
            try:
                await storage.create_case(case)
            except CaseExistsError:
                stored = await storage.retrieve_case(guid)
            else:
                report.imported.append(guid)
                continue
        report.present.append(guid)
        if stored is not None and _comparable(stored) != _comparable(case):
            report.differs.append(guid)
    identities_file = directory / _IDENTITIES
    if identities_file.is_file():
        try:
            identities = await asyncio.to_thread(_read_identities, identities_file)
        except ValueError as exc:
            report.refused.append((str(_IDENTITIES), str(exc)))
        else:
            seen = {identity.username for identity in await storage.enumerate_identities()}
            for identity in identities:
                if identity.username in seen:
                    report.identities_present += 1
                    continue
                await storage.store_identity(identity)
                seen.add(identity.username)
                report.identities_imported += 1
    return report
