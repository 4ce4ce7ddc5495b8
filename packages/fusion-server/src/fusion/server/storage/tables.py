"""A service's own SQLite table: one Concept per row, keyed by a string."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Final, Generic, NamedTuple, Self, TypeVar
from uuid import UUID

import msgspec

from fusion.concept import Concept, json_decoder
from fusion.server.storage._sqlite import Synchronous, check_options, connect, open_wal, transaction
from fusion.server.storage.sqlite import StorageClosedError

__all__ = ["RowExistsError", "SQLiteTable"]

ConceptT = TypeVar("ConceptT", bound=Concept)
_T = TypeVar("_T")

# Statements interpolate the table and column names (SQL takes no parameters for
# identifiers): only names matching this pass __init__; values are always parameters.
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Names SQLiteStorage uses in its file, and SQLite's own.
_RESERVED_TABLES: Final = frozenset({"cases", "identities"})
Scalar = str | int | float | None


class _Handles(NamedTuple):
    write_executor: ThreadPoolExecutor
    writer: sqlite3.Connection
    read_executor: ThreadPoolExecutor
    reader: sqlite3.Connection


class RowExistsError(ValueError):
    """:meth:`SQLiteTable.insert` found a row under that key already."""

    def __init__(self, table: str, key: str) -> None:
        super().__init__(f"{table}: {key!r} already exists")
        self.table = table
        self.key = key


class SQLiteTable(Generic[ConceptT]):
    """Rows of ``concept_type`` in table ``table`` of the SQLite file ``path``.

    Each row is a key (a string; a UUID is stored as its canonical string)
    and the JSON of one Concept, so fields a service adds later round-trip
    (rows missing them decode with the defaults). Fields named in ``indexed``
    (scalars: strings, numbers, booleans, enums, UUIDs, or None) also get a
    column and an index, which :meth:`enumerate` and :meth:`count` filter on
    by equality; a field added to ``indexed`` later is filled in for the rows
    already stored when the table starts.

    The same rules as :class:`~fusion.server.storage.SQLiteStorage`, with the
    same connection code: the file is in WAL mode, writers wait up to
    ``busy_timeout`` seconds for each other, and every statement runs on a
    thread of this table (one for writes, one for reads), never on the event
    loop. Nothing is cached: every read asks the file, so several processes
    sharing it see each other's commits at once. Several tables may share a
    file; SQLiteStorage's own table names (``cases``, ``identities``) are refused.
    """

    def __init__(
        self,
        path: Path | str,
        table: str,
        concept_type: type[ConceptT],
        *,
        indexed: Iterable[str] = (),
        busy_timeout: float = 10.0,
        synchronous: Synchronous = "NORMAL",
    ) -> None:
        # Interpolated into statements (identifiers take no parameters): only plain names pass.
        if not _IDENTIFIER.fullmatch(table) or table.lower().startswith("sqlite_"):
            raise ValueError(f"table must be a plain SQL name (letters, digits, _), not {table!r}")
        if table.lower() in _RESERVED_TABLES:
            raise ValueError(f"table {table!r} is SQLiteStorage's: choose another name")
        check_options(busy_timeout, synchronous)
        fields = {field.name for field in msgspec.structs.fields(concept_type)}
        self.indexed: tuple[str, ...] = tuple(dict.fromkeys(indexed))
        for name in self.indexed:
            if name not in fields:
                raise ValueError(f"{concept_type.__name__} has no field {name!r} to index")
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(f"field {name!r} cannot be an indexed column")
        self.path = Path(path)
        self.table = table
        self.concept_type = concept_type
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._synchronous = synchronous
        self._decoder = json_decoder(concept_type)
        self._columns = "".join(f", f_{name}" for name in self.indexed)
        self._handles: _Handles | None = None

    # -- lifecycle ------------------------------------------------------------------
    async def startup(self) -> None:
        """Open the file (created if needed, WAL) and create the table and its indexes."""
        if self._handles is not None:
            return
        loop = asyncio.get_running_loop()
        write_executor = ThreadPoolExecutor(1, thread_name_prefix=f"fusion-table-{self.table}-w")
        read_executor = ThreadPoolExecutor(1, thread_name_prefix=f"fusion-table-{self.table}-r")
        writer: sqlite3.Connection | None = None
        try:
            writer = await loop.run_in_executor(write_executor, self._open_writer)
            reader = await loop.run_in_executor(
                read_executor, connect, self.path, self._busy_timeout_ms, self._synchronous
            )
        except BaseException:
            if writer is not None:
                writer.close()
            write_executor.shutdown(wait=False)
            read_executor.shutdown(wait=False)
            raise
        self._handles = _Handles(write_executor, writer, read_executor, reader)

    async def shutdown(self) -> None:
        """Close the connections (after the work already queued)."""
        handles, self._handles = self._handles, None
        if handles is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(handles.write_executor, handles.writer.close)
        await loop.run_in_executor(handles.read_executor, handles.reader.close)
        handles.write_executor.shutdown(wait=False)
        handles.read_executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        await self.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    def _open_writer(self) -> sqlite3.Connection:
        conn = open_wal(self.path, self._busy_timeout_ms, self._synchronous)
        table = self.table
        try:
            with transaction(conn):
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} "
                    "(key TEXT PRIMARY KEY NOT NULL, data BLOB NOT NULL)"
                )
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                added = [name for name in self.indexed if f"f_{name}" not in present]
                for name in added:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN f_{name}")
                if added:
                    self._fill_columns(conn, added)
                for name in self.indexed:
                    conn.execute(
                        f"CREATE INDEX IF NOT EXISTS {table}_f_{name} ON {table} (f_{name})"
                    )
        except BaseException:
            conn.close()
            raise
        return conn

    def _fill_columns(self, conn: sqlite3.Connection, names: list[str]) -> None:
        """Give rows stored before ``names`` were indexed their column values."""
        assignments = ", ".join(f"f_{name} = ?" for name in names)
        rows = conn.execute(f"SELECT key, data FROM {self.table}").fetchall()  # noqa: S608
        for key, data in rows:
            concept = self._decode(bytes(data))
            values = [_column_value(getattr(concept, name)) for name in names]
            sql = f"UPDATE {self.table} SET {assignments} WHERE key = ?"  # noqa: S608
            conn.execute(sql, (*values, key))

    # -- rows ---------------------------------------------------------------------------
    async def get(self, key: UUID | str) -> ConceptT | None:
        """The row stored under ``key``, or None."""
        name = _key(key)
        sql = f"SELECT data FROM {self.table} WHERE key = ?"  # noqa: S608
        rows = await self._read(lambda conn: conn.execute(sql, (name,)).fetchall())
        return self._decode(bytes(rows[0][0])) if rows else None

    async def put(self, key: UUID | str, concept: ConceptT) -> None:
        """Insert the row, or replace the one stored under ``key``."""
        params = self._row(key, concept)
        updates = "".join(f", f_{name} = excluded.f_{name}" for name in self.indexed)
        sql = (
            f"INSERT INTO {self.table} (key, data{self._columns}) "  # noqa: S608
            f"VALUES ({_marks(params)}) "
            f"ON CONFLICT (key) DO UPDATE SET data = excluded.data{updates}"
        )

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(sql, params)

        await self._write(job)

    async def insert(self, key: UUID | str, concept: ConceptT) -> None:
        """Insert a new row; :class:`RowExistsError` (nothing written) when ``key`` is taken."""
        params = self._row(key, concept)
        columns, marks = self._columns, _marks(params)
        sql = f"INSERT INTO {self.table} (key, data{columns}) VALUES ({marks})"  # noqa: S608

        def job(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(sql, params)
            except sqlite3.IntegrityError:
                raise RowExistsError(self.table, str(params[0])) from None

        await self._write(job)

    async def delete(self, key: UUID | str) -> bool:
        """Delete the row under ``key``; False when there was none."""
        name = _key(key)
        sql = f"DELETE FROM {self.table} WHERE key = ?"  # noqa: S608
        return await self._write(lambda conn: conn.execute(sql, (name,)).rowcount > 0)

    async def enumerate(self, **equal: object) -> list[tuple[str, ConceptT]]:
        """``(key, concept)`` of every row (sorted by key), or of those whose indexed
        fields equal the values given: ``enumerate(status=Status.PENDING)``."""
        where, values = self._where(equal)
        sql = f"SELECT key, data FROM {self.table}{where} ORDER BY key"  # noqa: S608
        rows = await self._read(lambda conn: conn.execute(sql, values).fetchall())
        return [(str(key), self._decode(bytes(data))) for key, data in rows]

    async def count(self, **equal: object) -> int:
        """How many rows there are (whose indexed fields equal the values given)."""
        where, values = self._where(equal)
        sql = f"SELECT count(*) FROM {self.table}{where}"  # noqa: S608
        rows = await self._read(lambda conn: conn.execute(sql, values).fetchall())
        return int(rows[0][0])

    # -- plumbing -------------------------------------------------------------------------
    def _row(self, key: UUID | str, concept: ConceptT) -> tuple[Scalar | bytes, ...]:
        if not isinstance(concept, self.concept_type):
            raise TypeError(f"{self.table} stores {self.concept_type.__name__}, not {concept!r}")
        columns = (_column_value(getattr(concept, name)) for name in self.indexed)
        return (_key(key), concept.to_json(), *columns)

    def _where(self, equal: dict[str, object]) -> tuple[str, tuple[Scalar, ...]]:
        if not equal:
            return "", ()
        for name in equal:
            if name not in self.indexed:
                raise ValueError(
                    f"{self.table}: cannot filter on {name!r}, not an indexed field "
                    f"(indexed: {', '.join(self.indexed) or 'none'})"
                )
        # IS: equality that also matches None (NULL), and still uses the index.
        where = " AND ".join(f"f_{name} IS ?" for name in equal)
        return f" WHERE {where}", tuple(_column_value(value) for value in equal.values())

    def _decode(self, data: bytes) -> ConceptT:
        try:
            concept: ConceptT = self._decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise sqlite3.DataError(
                f"{self.path}: a row of {self.table} cannot be decoded: {exc}"
            ) from exc
        return concept

    async def _write(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        handles = self._started()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(handles.write_executor, job, handles.writer)

    async def _read(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        handles = self._started()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(handles.read_executor, job, handles.reader)

    def _started(self) -> _Handles:
        if self._handles is None:
            raise StorageClosedError(
                f"{self.path}: table {self.table} not started (call startup())"
            )
        return self._handles


def _key(key: UUID | str) -> str:
    if isinstance(key, UUID):
        return str(key)
    if not isinstance(key, str) or not key:
        raise ValueError(f"a row key must be a non-empty string or a UUID, not {key!r}")
    return key


def _column_value(value: object) -> Scalar:
    """What an indexed field stores in its column (and a filter compares with)."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, UUID):
        return str(value)
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"an indexed field holds a string, number, enum, UUID or None, not {value!r}")


def _marks(params: tuple[object, ...]) -> str:
    return ", ".join("?" * len(params))
