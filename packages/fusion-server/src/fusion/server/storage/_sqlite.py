"""Opening SQLite files the one way SQLiteStorage and SQLiteTable both use (blocking: call
from the thread that will own the connection)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Final, Literal

__all__ = ["Synchronous", "check_options", "connect", "open_wal", "transaction"]

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
_SYNCHRONOUS: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


def check_options(busy_timeout: float, synchronous: str) -> None:
    """ValueError for a negative ``busy_timeout`` or an unknown ``synchronous``."""
    if busy_timeout < 0:
        raise ValueError("busy_timeout must not be negative")
    # Interpolated into a PRAGMA (which takes no parameters): only known words pass.
    if synchronous not in _SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, not {synchronous!r}")


def connect(path: Path, busy_timeout_ms: int, synchronous: str) -> sqlite3.Connection:
    """A connection with ``busy_timeout`` and ``synchronous`` set, transactions explicit."""
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), never
    # opened behind our back by the sqlite3 module; a lone statement commits itself.
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, cached_statements=64
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn


def open_wal(path: Path, busy_timeout_ms: int, synchronous: str) -> sqlite3.Connection:
    """:func:`connect` to ``path`` (its directory created) with the file in WAL mode.

    ``PRAGMA journal_mode=WAL`` is persistent in the file: every later
    connection, of any process, is WAL. The switch takes an exclusive lock that
    SQLite's busy handler does not wait for (processes opening a new file at
    once get "database is locked"), so it is retried for up to ``busy_timeout``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, busy_timeout_ms, synchronous)
    try:
        deadline = time.monotonic() + busy_timeout_ms / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.02)
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot enable WAL (mode {mode})")
    except BaseException:
        conn.close()
        raise
    return conn


class transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error).

    IMMEDIATE takes the write lock up front, so two processes never both
    read then fail to upgrade (the deadlock SQLite answers with SQLITE_BUSY
    without waiting).
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        conn = self._conn
        if exc_type is None:
            try:
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT leaves the transaction open: the next BEGIN would fail.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        elif conn.in_transaction:
            conn.execute("ROLLBACK")
