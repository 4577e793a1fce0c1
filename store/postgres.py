"""The production store: Postgres through an asyncpg pool.

Money is ``NUMERIC`` (asyncpg hands back Decimal), times ``TIMESTAMPTZ``.
Budget rows are locked with ``SELECT ... FOR UPDATE`` inside each write, so
any number of proxy processes can record against one budget.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from taximeter.pricing.money import quantize
from taximeter.store.base import Conflict, StoreUnavailable
from taximeter.store.models import UsageEvent
from taximeter.store.sql import EVENT_COLUMNS, Conn, Dialect, SqlStore

__all__ = ["PostgresStore"]

_TYPES = {"money": "NUMERIC(30, 9)", "time": "TIMESTAMPTZ", "bool": "BOOLEAN", "bigint": "BIGINT"}
_MIGRATION_LOCK = 0x7A61_6D65  # any constant; one advisory lock serialises concurrent start-ups
_PLACEHOLDER = re.compile(r"\?")
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class PostgresDialect(Dialect):
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    types = _TYPES
    migration_lock = f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"
    day_of = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def money_in(self, amount: Decimal) -> Decimal:
        return amount

    def money_out(self, value: Any) -> Decimal:
        return quantize(Decimal(0) if value is None else Decimal(value))

    def time_in(self, when: datetime) -> datetime:
        return when.astimezone(UTC)

    def time_out(self, value: Any) -> datetime:
        return value.astimezone(UTC)  # type: ignore[no-any-return]


def _numbered(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - a deliberate memo
    """``?`` placeholders as asyncpg's ``$1, $2, …``."""
    if sql not in cache:
        counter = iter(range(1, 1000))
        cache[sql] = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)
    return cache[sql]


class _Conn:
    """The one place asyncpg's exceptions become the store's."""

    def __init__(self, conn: Any) -> None:  # a pooled asyncpg connection
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            status = await self._conn.execute(_numbered(sql), *args)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(str(exc)) from exc
        except _DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"Postgres: {exc}") from exc
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetchone(self, sql: str, *args: Any) -> Any:
        try:
            return await self._conn.fetchrow(_numbered(sql), *args)
        except _DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"Postgres: {exc}") from exc

    async def fetchall(self, sql: str, *args: Any) -> Sequence[Any]:
        try:
            return list(await self._conn.fetch(_numbered(sql), *args))
        except _DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"Postgres: {exc}") from exc


# Types of EVENT_COLUMNS, in order, for inserting a batch as one array per column.
_EVENT_TYPES = (
    ["text"] * 7
    + ["integer"]
    + ["bigint"] * 5
    + ["numeric", "integer", "numeric", "numeric", "text"]
    + ["numeric", "boolean", "boolean", "timestamptz"]
)
# The batch in one statement: events inserted (a request id already there is
# skipped) and the store-held reservations of those calls deleted.
_INSERT_EVENTS = (
    f"WITH inserted AS (INSERT INTO usage_events ({EVENT_COLUMNS}) "
    f"SELECT * FROM unnest({', '.join(f'?::{t}[]' for t in _EVENT_TYPES)}) "
    "ON CONFLICT (request_id) DO NOTHING RETURNING request_id), "
    "dropped AS (DELETE FROM reservations WHERE request_id IN (SELECT request_id FROM inserted)) "
    "SELECT request_id FROM inserted"
)


class PostgresStore(SqlStore):
    """:class:`~taximeter.store.base.Store` on Postgres."""

    dialect = PostgresDialect()

    async def _insert_events(self, conn: Conn, events: list[UsageEvent]) -> set[str]:
        # One round trip for the whole batch: a column per array.
        if not events:
            return set()
        columns = [list(column) for column in zip(*(self._event_values(e) for e in events), strict=True)]
        return {row["request_id"] for row in await conn.fetchall(_INSERT_EVENTS, *columns)}

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> PostgresStore:
        try:
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=10)
        except _DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"cannot connect to Postgres: {exc}") from exc
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self._acquire() as conn:
            tx = conn.transaction()
            try:
                await tx.start()
            except _DRIVER_ERRORS as exc:
                raise StoreUnavailable(f"Postgres: {exc}") from exc
            try:
                yield _Conn(conn)
            except BaseException:
                await _quietly(tx.rollback())
                raise
            try:
                await tx.commit()
            except _DRIVER_ERRORS as exc:
                raise StoreUnavailable(f"Postgres commit failed: {exc}") from exc

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        async with self._acquire() as conn:
            yield _Conn(conn)

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Any]:
        try:
            conn = await self._pool.acquire(timeout=10)
        except _DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"Postgres: {exc}") from exc
        try:
            yield conn
        finally:
            await _quietly(self._pool.release(conn))


async def _quietly(awaitable: Any) -> None:
    # Rolling back or releasing a broken connection must not hide the first error.
    try:
        await awaitable
    except _DRIVER_ERRORS:
        pass
