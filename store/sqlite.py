"""The embedded store: SQLite through aiosqlite, so the event loop never blocks.

One writer connection, serialised by a lock (SQLite has one writer anyway),
and one reader; WAL lets them, and other processes such as the CLI, work at
once. Money is stored as integer nanos, times as fixed-width UTC ISO text.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from taximeter.pricing.models import UsageEvent
from taximeter.pricing.money import from_nanos, to_nanos
from taximeter.store.base import Conflict, DataRejected, DriverErrors, StoreUnavailable
from taximeter.store.sql import EVENT_COLUMNS, Conn, Dialect, SqlStore
from taximeter.store.sql.core import power_of_two_chunks
from taximeter.store.sql.rows import event_row

__all__ = ["SqliteStore", "sqlite_path"]

_TYPES = {
    "money": "INTEGER",
    "time": "TEXT",
    "bool": "INTEGER",
    "bigint": "INTEGER",
    "day_of": "substr(created_at, 1, 10)",
    "lock_events": "SELECT 1",  # a migration holds SQLite's one write lock already
    "partition_events": "SELECT 1",  # one table; old events are deleted row by row
}
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width, so text order is time order


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    if not url.startswith("sqlite:///"):
        raise ValueError("a SQLite URL looks like sqlite:///path/to/file.db")
    return url.removeprefix("sqlite:///")


class SqliteDialect(Dialect):
    day_of = _TYPES["day_of"]
    types = _TYPES  # BEGIN IMMEDIATE already serialises concurrent migrations

    def money_in(self, amount: Decimal) -> int:
        return to_nanos(amount)

    def money_out(self, value: Any) -> Decimal:
        return from_nanos(int(value or 0))

    def time_in(self, when: datetime) -> str:
        return when.astimezone(UTC).strftime(_TIME_FORMAT)

    def time_out(self, value: Any) -> datetime:
        return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)


_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})


class _Mapped(DriverErrors):
    """The one place SQLite's exceptions become the store's: every call into
    aiosqlite (statement, fetch, transaction control) runs inside ``with _DRIVER:``.

    A value SQLite cannot take is the data's fault (DataRejected): an int past
    64 bits (OverflowError), text that is not UTF-8 (a lone surrogate), a
    constraint other than uniqueness. Anything else (locked, busy, disk I/O,
    a closed connection: aiosqlite's ValueError) passes (StoreUnavailable).
    """

    def translate(self, exc: BaseException) -> Exception | None:
        if isinstance(exc, sqlite3.IntegrityError) and getattr(exc, "sqlite_errorname", "") in _UNIQUE:
            return Conflict(str(exc))
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | OverflowError | UnicodeError):
            return DataRejected(f"{self.prefix} refused a value: {exc}")
        if isinstance(exc, sqlite3.Error | ValueError):
            return StoreUnavailable(f"{self.prefix}: {exc}")
        return None


_DRIVER = _Mapped("SQLite")


class _Conn:
    """An aiosqlite connection speaking the store's exceptions."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> int:
        with _DRIVER:
            return (await self._db.execute(sql, args)).rowcount

    async def fetchone(self, sql: str, *args: Any) -> Any:
        with _DRIVER:
            return await (await self._db.execute(sql, args)).fetchone()

    async def fetchall(self, sql: str, *args: Any) -> Sequence[Any]:
        with _DRIVER:
            return list(await (await self._db.execute(sql, args)).fetchall())


_ROWS_PER_INSERT = 256  # 22 values a row: well under SQLite's 32,766 parameters
_EVENT_ROW = "(" + ", ".join(["?"] * len(EVENT_COLUMNS.split(","))) + ")"


class SqliteStore(SqlStore):
    """:class:`~taximeter.store.base.Store` on a SQLite file."""

    dialect = SqliteDialect()

    async def _insert_events(self, conn: Conn, events: list[UsageEvent]) -> set[str]:
        # Each statement is a hop to aiosqlite's thread: a batch takes a few, not two per event.
        inserted: set[str] = set()
        for chunk in power_of_two_chunks(events, _ROWS_PER_INSERT):
            rows = await conn.fetchall(
                f"INSERT INTO usage_events ({EVENT_COLUMNS}) VALUES {', '.join([_EVENT_ROW] * len(chunk))} "
                "ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                *(value for event in chunk for value in event_row(self.dialect, event)),
            )
            ids = [row["request_id"] for row in rows]
            inserted.update(ids)
            if ids:  # store-held reservations of these calls are done with
                await conn.execute(
                    "DELETE FROM reservations WHERE request_id IN (SELECT value FROM json_each(?))",
                    orjson.dumps(ids).decode(),
                )
        return inserted

    def __init__(self, path: str) -> None:
        self._path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str) -> SqliteStore:
        store = cls(sqlite_path(url))
        await store._connect()
        return store

    async def _connect(self) -> None:
        if self._path != ":memory:":
            await asyncio.to_thread(Path(self._path).parent.mkdir, parents=True, exist_ok=True)
        with _Mapped(f"cannot open SQLite database {self._path}"):
            self._writer = await self._open_one()
            # An in-memory database exists once per connection: share it.
            self._reader = self._writer if self._path == ":memory:" else await self._open_one()

    async def _open_one(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self._path, isolation_level=None)
        db.row_factory = sqlite3.Row
        # WAL lets readers and the CLI work beside the writer; FULL sync makes
        # each committed charge survive power loss, not just a crash.
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=5000"):
            await db.execute(f"PRAGMA {pragma}")
        return db

    async def close(self) -> None:
        for db in {id(c): c for c in (self._reader, self._writer) if c is not None}.values():
            with contextlib.suppress(StoreUnavailable), _DRIVER:
                await db.close()
        self._reader = self._writer = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self._write_lock:
            db = self._require(self._writer)
            with _DRIVER:
                # IMMEDIATE takes the write lock up front, so two processes
                # cannot both read a budget and then both write it.
                await db.execute("BEGIN IMMEDIATE")
            try:
                yield _Conn(db)
            except BaseException:
                await _quietly(db, "ROLLBACK")
                raise
            try:
                with _DRIVER:
                    await db.execute("COMMIT")
            except StoreUnavailable:
                await _quietly(db, "ROLLBACK")
                raise

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        yield _Conn(self._require(self._reader))

    def _require(self, db: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if db is None:
            raise StoreUnavailable("SQLite store is closed")
        return db


async def _quietly(db: aiosqlite.Connection, statement: str) -> None:
    """Roll back after a failure: a second error must not hide the first."""
    with contextlib.suppress(StoreUnavailable, Conflict), _DRIVER:
        await db.execute(statement)
