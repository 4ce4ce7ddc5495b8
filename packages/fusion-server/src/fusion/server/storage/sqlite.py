"""The default FusionStorage: one SQLite file in the service's data directory.

Threads and the event loop
--------------------------
Every statement that may touch the disk or wait on a lock runs on a
dedicated single-thread executor that owns its connection: one for writes
(so writes of this process are serialised and never wait on each other's
locks inside SQLite), one for reads that miss the cache. The event loop only
ever runs ``PRAGMA data_version`` on a third connection (the *probe*), with
``busy_timeout=0`` so it can never sleep: a busy answer is treated as "the
data changed" and the read goes to the read thread.

Read cache, correct across processes
------------------------------------
Decoded reads are served from a dict of stored JSON bytes and their
version, keyed by GUID.
``PRAGMA data_version`` on the probe connection changes whenever any *other*
connection (the writer thread of this process, or any connection of another
process sharing the file) has committed since the probe last asked, so reads
ask first and drop the whole cache on a change. They ask once per event-loop
iteration (see :meth:`SQLiteStorage._check_fresh`): every request handled in
an iteration arrived before it began, so one check made during it sees every
commit those requests can depend on. Measured on the reference 2-core
machine (Python 3.11, WAL file on local disk):

- ``PRAGMA data_version`` on the loop: about 2.5 us per call, reading only
  the WAL index in shared memory, no I/O;
- one hop through a thread executor and back: about 70 us wall and 60 us of
  CPU per call (future, wake-up pipe, two context switches);
- msgspec decoding of a stored Case: about 0.5 us.

So a cached ``retrieve_case`` costs about 3 us on the loop, where a thread
hop per read would cost more than the rest of a GET handler and miss the
"75% of a bare aiohttp handler" target. Fetches that raced a cache drop are
not stored (a generation counter), so a slow read that started before a
commit cannot put stale bytes back after the drop.

Returned cases are decoded afresh from the cached bytes on every call, so a
caller mutating one cannot change the cache.

Versions and compare-and-swap
-----------------------------
Each row of ``cases`` has a ``version`` column (schema 2; a schema 1 file is
migrated when opened, its cases starting at version 1). A conditional
update or delete reads the stored version and writes inside one ``BEGIN
IMMEDIATE`` transaction, which holds the file's write lock: no other
connection, of this process or another, can commit in between. A read
served from a stale cache can only make a compare-and-swap fail, never
succeed wrongly.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, NamedTuple, TypeVar
from uuid import UUID

import msgspec

from fusion.concept import Case, Identity, json_decoder
from fusion.server.storage._sqlite import Synchronous, check_options, connect, open_wal
from fusion.server.storage._sqlite import transaction as _transaction
from fusion.server.storage.base import (
    CaseConflictError,
    CaseExistsError,
    CaseNotFoundError,
    CaseT,
    FusionStorage,
    VersionedCase,
)

__all__ = ["SQLiteStorage", "StorageClosedError"]

_T = TypeVar("_T")

# 1: cases (guid, data) and identities; 2: cases.version.
_SCHEMA_VERSION: Final = 2
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS cases (guid TEXT PRIMARY KEY NOT NULL, data BLOB NOT NULL, "
    "version INTEGER NOT NULL DEFAULT 1)",
    "CREATE TABLE IF NOT EXISTS identities "
    "(username TEXT PRIMARY KEY NOT NULL, data BLOB NOT NULL)",
)
# Cached answer for "no such case": a 404 under a scan of GUIDs is as hot
# as a 200, which is also why the cache is bounded (oldest entries go first).
_MISSING: Final = (b"", 0)


class StorageClosedError(RuntimeError):
    """The storage was used before :meth:`SQLiteStorage.startup` or after shutdown."""


class SQLiteStorage(FusionStorage[CaseT]):
    """Cases and identities in ``<data_dir>/<filename>`` (SQLite, WAL mode).

    Cases are stored as the JSON of ``case_type`` (the service's Case
    subclass), so fields a service adds round-trip. Several processes may
    share the file: writers wait up to ``busy_timeout`` seconds for each
    other, and every process sees the others' commits on its next read.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        case_type: type[CaseT] = Case,  # type: ignore[assignment]
        filename: str = "fusion.sqlite",
        busy_timeout: float = 10.0,
        synchronous: Synchronous = "NORMAL",
        cache_size: int = 16384,
    ) -> None:
        if not filename or Path(filename).name != filename:
            raise ValueError(f"filename must be a bare file name, not {filename!r}")
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        check_options(busy_timeout, synchronous)
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / filename
        self.case_type = case_type
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._synchronous = synchronous
        self._cache_size = cache_size
        self._decoder = json_decoder(case_type)
        self._identity_decoder = json_decoder(Identity)
        self._handles: _Handles | None = None
        # GUID -> (stored JSON, version), or _MISSING.
        self._cases: dict[UUID, tuple[bytes, int]] = {}
        self._identities: dict[str, bytes] | None = None
        self._all_cases: list[bytes] | None = None
        self._generation = 0
        self._data_version: int | None = None
        # True from a data_version check to the end of that event-loop iteration.
        self._checked = False

    # -- lifecycle ------------------------------------------------------------
    async def startup(self) -> None:
        if self._handles is not None:
            return
        loop = asyncio.get_running_loop()
        write_executor = ThreadPoolExecutor(1, thread_name_prefix="fusion-sqlite-write")
        read_executor = ThreadPoolExecutor(1, thread_name_prefix="fusion-sqlite-read")
        opened: list[sqlite3.Connection] = []
        try:
            writer = await loop.run_in_executor(write_executor, self._open_writer)
            opened.append(writer)
            reader = await loop.run_in_executor(read_executor, self._connect, self._busy_timeout_ms)
            opened.append(reader)
            # Opened off the loop; afterwards it only answers PRAGMA data_version.
            probe = await loop.run_in_executor(read_executor, self._connect, 0)
        except BaseException:
            for conn in opened:
                conn.close()
            write_executor.shutdown(wait=False)
            read_executor.shutdown(wait=False)
            raise
        self._handles = _Handles(write_executor, read_executor, writer, reader, probe)
        self._data_version = None
        self._drop_cache()

    async def shutdown(self) -> None:
        handles, self._handles = self._handles, None
        if handles is None:
            return
        self._drop_cache()
        loop = asyncio.get_running_loop()
        # Each connection is closed on the thread that used it, after its
        # queued work: the executors run jobs in order.
        await loop.run_in_executor(handles.write_executor, handles.writer.close)
        await loop.run_in_executor(handles.read_executor, handles.reader.close)
        await loop.run_in_executor(handles.read_executor, handles.probe.close)
        handles.write_executor.shutdown(wait=False)
        handles.read_executor.shutdown(wait=False)

    async def ready(self) -> None:
        """:class:`StorageClosedError` when not started; OSError when the database
        file is gone or the data directory takes no new file. Runs on the write
        thread, so a wedged writer fails the caller's timeout too."""
        await self._write(self._probe)

    def _probe(self, conn: sqlite3.Connection) -> None:
        os.stat(self.path)
        with tempfile.TemporaryFile(dir=self.data_dir) as probe:
            probe.write(b"ready")
            probe.flush()

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        return connect(self.path, busy_timeout_ms, self._synchronous)

    def _open_writer(self) -> sqlite3.Connection:
        conn = open_wal(self.path, self._busy_timeout_ms, self._synchronous)
        try:
            with _transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                version = conn.execute("PRAGMA user_version").fetchall()[0][0]
                if version > _SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(
                        f"{self.path}: schema version {version} is newer than this "
                        f"fusion-server understands ({_SCHEMA_VERSION})"
                    )
                columns = {row[1] for row in conn.execute("PRAGMA table_info(cases)")}
                if "version" not in columns:
                    # Schema 1: every case it holds starts at version 1.
                    conn.execute("ALTER TABLE cases ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION:d}")
        except BaseException:
            conn.close()
            raise
        return conn

    # -- plumbing ---------------------------------------------------------------
    async def _write(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        handles = self._started()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(handles.write_executor, job, handles.writer)
        finally:
            # Whatever this iteration's check saw, the next read looks again.
            self._checked = False

    async def _read(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        handles = self._started()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(handles.read_executor, job, handles.reader)

    def _started(self) -> _Handles:
        handles = self._handles
        if handles is None:
            raise StorageClosedError(f"{self.path}: storage not started (call startup())")
        return handles

    def _drop_cache(self) -> None:
        self._cases.clear()
        self._identities = None
        self._all_cases = None
        self._generation += 1

    def _check_fresh(self) -> None:
        """Drop the cache when any other connection committed since the last check.

        Asked once per event-loop iteration: the reads of one iteration handle
        requests whose bytes were all received before it began, so a check made
        during it already sees every commit those requests can depend on (a
        client that saw another replica's write answer sent its request after
        that commit). Writes of this process force a new check.
        """
        if self._checked:
            return
        try:
            rows = self._started().probe.execute("PRAGMA data_version").fetchall()
        except sqlite3.OperationalError:
            # Busy (WAL recovery in another process): we cannot tell, so forget everything.
            self._data_version = None
            self._drop_cache()
            return
        version: int = rows[0][0]
        if version != self._data_version:
            self._data_version = version
            self._drop_cache()
        self._checked = True
        asyncio.get_running_loop().call_soon(self._end_check)

    def _end_check(self) -> None:
        self._checked = False

    def _remember_case(self, generation: int, case_guid: UUID, row: tuple[bytes, int]) -> None:
        if generation != self._generation:
            return
        cases = self._cases
        if len(cases) >= self._cache_size:
            del cases[next(iter(cases))]
        cases[case_guid] = row

    # -- cases --------------------------------------------------------------------
    async def create_case(self, case: CaseT) -> None:
        guid = str(case.guid)
        data = case.to_json()

        def job(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                try:
                    conn.execute(
                        "INSERT INTO cases (guid, data, version) VALUES (?, ?, 1)", (guid, data)
                    )
                except sqlite3.IntegrityError:
                    raise CaseExistsError(case.guid) from None

        await self._write(job)

    async def _stored_case(self, case_guid: UUID) -> tuple[bytes, int]:
        """(JSON, version) of the stored case, or _MISSING: from the cache when fresh."""
        self._check_fresh()
        row = self._cases.get(case_guid)
        if row is None:
            generation = self._generation
            guid = str(case_guid)

            def job(conn: sqlite3.Connection) -> tuple[bytes, int]:
                rows = conn.execute(
                    "SELECT data, version FROM cases WHERE guid = ?", (guid,)
                ).fetchall()
                return (bytes(rows[0][0]), int(rows[0][1])) if rows else _MISSING

            row = await self._read(job)
            self._remember_case(generation, case_guid, row)
        return row

    async def retrieve_versioned_case(self, case_guid: UUID) -> VersionedCase[CaseT] | None:
        data, version = await self._stored_case(case_guid)
        return VersionedCase(self._decode_case(data), version) if data else None

    async def update_case(self, case: CaseT, *, expected_version: int | None = None) -> int:
        guid = str(case.guid)
        data = case.to_json()

        def job(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                version = _check_version(conn, case.guid, expected_version)
                if version is None:
                    raise CaseNotFoundError(case.guid)
                conn.execute(
                    "UPDATE cases SET data = ?, version = ? WHERE guid = ?",
                    (data, version + 1, guid),
                )
                return version + 1

        return await self._write(job)

    async def delete_case(self, case_guid: UUID, *, expected_version: int | None = None) -> bool:
        guid = str(case_guid)

        def job(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                if _check_version(conn, case_guid, expected_version) is None:
                    return False
                conn.execute("DELETE FROM cases WHERE guid = ?", (guid,))
                return True

        return await self._write(job)

    async def enumerate_cases(self) -> list[CaseT]:
        self._check_fresh()
        all_cases = self._all_cases
        if all_cases is None:
            generation = self._generation

            def job(conn: sqlite3.Connection) -> list[bytes]:
                rows = conn.execute("SELECT data FROM cases ORDER BY rowid").fetchall()
                return [bytes(row[0]) for row in rows]

            all_cases = await self._read(job)
            if generation == self._generation:
                self._all_cases = all_cases
        decode = self._decode_case
        return [decode(data) for data in all_cases]

    async def attach_case(self, case_guid: UUID, next_case_guid: UUID) -> CaseT | None:
        old_guid, new_guid = str(case_guid), str(next_case_guid)
        decode = self._decode_case

        def job(conn: sqlite3.Connection) -> bytes | None:
            with _transaction(conn):
                rows = conn.execute(
                    "SELECT data, version FROM cases WHERE guid = ?", (old_guid,)
                ).fetchall()
                if not rows:
                    return None
                if old_guid == new_guid:
                    return bytes(rows[0][0])
                case = decode(bytes(rows[0][0]))
                case.guid = next_case_guid
                data = case.to_json()
                version = int(rows[0][1]) + 1
                try:
                    conn.execute(
                        "INSERT INTO cases (guid, data, version) VALUES (?, ?, ?)",
                        (new_guid, data, version),
                    )
                except sqlite3.IntegrityError:
                    raise CaseExistsError(next_case_guid) from None
                conn.execute("DELETE FROM cases WHERE guid = ?", (old_guid,))
                return data

        data = await self._write(job)
        return None if data is None else decode(data)

    def _decode_case(self, data: bytes) -> CaseT:
        try:
            case: CaseT = self._decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            # A row written by a service with another Case subclass, or edited by hand.
            raise sqlite3.DataError(f"{self.path}: stored case cannot be decoded: {exc}") from exc
        return case

    # -- identities -------------------------------------------------------------------
    async def store_identity(self, identity: Identity) -> None:
        data = identity.to_json()
        username = identity.username
        # Servers call this on every login or even every request: skip the
        # write (and the cache drop it causes everywhere) when nothing changed.
        known = await self._identity_map()
        if known.get(username) == data:
            return

        def job(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "INSERT INTO identities (username, data) VALUES (?, ?) "
                    "ON CONFLICT (username) DO UPDATE SET data = excluded.data",
                    (username, data),
                )

        await self._write(job)

    async def enumerate_identities(self) -> list[Identity]:
        known = await self._identity_map()
        decode = self._identity_decoder.decode
        return [decode(known[username]) for username in sorted(known)]

    async def _identity_map(self) -> dict[str, bytes]:
        self._check_fresh()
        identities = self._identities
        if identities is None:
            generation = self._generation

            def job(conn: sqlite3.Connection) -> dict[str, bytes]:
                rows = conn.execute("SELECT username, data FROM identities").fetchall()
                return {str(row[0]): bytes(row[1]) for row in rows}

            identities = await self._read(job)
            if generation == self._generation:
                self._identities = identities
        return identities


def _check_version(
    conn: sqlite3.Connection, case_guid: UUID, expected_version: int | None
) -> int | None:
    """The stored version of a case (None: not stored), inside the caller's transaction;
    :class:`CaseConflictError` when ``expected_version`` is given and differs."""
    rows = conn.execute("SELECT version FROM cases WHERE guid = ?", (str(case_guid),)).fetchall()
    if not rows:
        return None
    version = int(rows[0][0])
    if expected_version is not None and version != expected_version:
        raise CaseConflictError(case_guid, expected_version, version)
    return version


class _Handles(NamedTuple):
    write_executor: ThreadPoolExecutor
    read_executor: ThreadPoolExecutor
    writer: sqlite3.Connection
    reader: sqlite3.Connection
    probe: sqlite3.Connection
