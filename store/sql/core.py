"""The SQL backends' common ground: connections, the dialect and the schema."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from taximeter.store.migrations import MIGRATIONS, render

__all__ = ["Conn", "Dialect", "Row", "SqlBase", "power_of_two_chunks"]

T = TypeVar("T")

Row = Any  # a driver row read by column name: sqlite3.Row or asyncpg.Record


class Conn(Protocol):
    """A connection, inside a transaction or not. SQL uses ``?`` placeholders."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it touched."""

    async def fetchone(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchall(self, sql: str, *args: Any) -> Sequence[Row]: ...


class Dialect(ABC):
    """How one backend stores what the generic SQL does not fix."""

    for_update: str = ""
    skip_locked: str = ""  # lets concurrent senders take different outbox rows
    day_of: str = ""  # SQL expression of created_at's UTC date, 'YYYY-MM-DD'
    types: dict[str, str] = {}  # {money}, {time}, {bool}, {bigint}, {day_of} in the migrations
    migration_lock: str | None = None  # a statement that serialises concurrent migrations
    # Where events are looked up by request id (alias ``e``), and the id column to match.
    events_by_id: tuple[str, str] = ("usage_events e", "e.request_id")

    @abstractmethod
    def money_in(self, amount: Decimal) -> Any: ...

    @abstractmethod
    def money_out(self, value: Any) -> Decimal: ...

    @abstractmethod
    def time_in(self, when: datetime) -> Any: ...

    @abstractmethod
    def time_out(self, value: Any) -> datetime: ...


class SqlBase(ABC):
    """A SQL store's connections and schema; each part of the store builds on it."""

    dialect: Dialect

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Conn]:
        """A connection in a write transaction (serialised with other writers)."""

    @abstractmethod
    def connection(self) -> AbstractAsyncContextManager[Conn]:
        """A connection for reads."""

    async def migrate(self) -> None:
        """Apply the missing migrations in one transaction (safe when several
        processes start together: the first one applies, the others wait)."""
        async with self.transaction() as conn:
            if self.dialect.migration_lock:
                await conn.execute(self.dialect.migration_lock)
            await conn.execute(
                render(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied_at {time} NOT NULL)",
                    self.dialect.types,
                )
            )
            done = {r["version"] for r in await conn.fetchall("SELECT version FROM schema_migrations")}
            for version, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements:
                    await conn.execute(render(statement, self.dialect.types))
                await conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    version,
                    self.dialect.time_in(datetime.now(UTC)),
                )

    async def schema_version(self) -> int:
        async with self.connection() as conn:
            row = await conn.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
        return int(row["v"] or 0) if row is not None else 0

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchone("SELECT 1")

    @abstractmethod
    async def close(self) -> None: ...


def power_of_two_chunks(rows: list[T], largest: int) -> list[list[T]]:
    """``rows`` in chunks of ``largest`` (a power of two), then of 128, 64, ...
    1 rows: a handful of statement shapes, so the drivers' caches of prepared
    statements stay small however many rows a batch has."""
    chunks, start, size = [], 0, largest
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        chunks.append(rows[start : start + size])
        start += size
    return chunks
