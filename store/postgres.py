"""The production store: Postgres through an asyncpg pool.

Money is ``NUMERIC`` (asyncpg hands back Decimal), times ``TIMESTAMPTZ``.
Budget rows are locked with ``SELECT ... FOR UPDATE`` inside each write, so
any number of proxy processes can record against one budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

from taximeter.pricing.models import UsageEvent
from taximeter.pricing.money import quantize
from taximeter.store.base import Conflict, DataRejected, DriverErrors, StoreUnavailable
from taximeter.store.sql import EVENT_COLUMNS, Conn, Dialect, SqlStore
from taximeter.store.sql.rows import event_row

__all__ = ["PostgresStore"]

_TYPES = {
    "money": "NUMERIC(30, 9)",
    "time": "TIMESTAMPTZ",
    "bool": "BOOLEAN",
    "bigint": "BIGINT",
    "day_of": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    # Writers wait while the daily totals are summed from the events (readers do not).
    "lock_events": "LOCK TABLE usage_events IN SHARE ROW EXCLUSIVE MODE",
}
_MIGRATION_LOCK = 0x7A61_6D65  # any constant; one advisory lock serialises concurrent start-ups
_PLACEHOLDER = re.compile(r"\?")
_CLOSE_S = 10.0  # a pool whose server is gone is dropped rather than closed politely

# A value the server or asyncpg refuses: the same write fails however often it
# is retried, so it is the data's fault (the ledger sets the event aside).
_DATA_ERRORS: tuple[type[Exception], ...] = (
    asyncpg_base.DataError,  # asyncpg cannot encode it: an int past bigint, a lone surrogate
    asyncpg.DataError,  # class 22: NUL in text, a numeric out of range, an untranslatable character
    asyncpg.IntegrityConstraintViolationError,  # class 23 (a unique violation is a Conflict)
    asyncpg.ProgramLimitExceededError,  # class 54: e.g. a key too long for its index
)
# Everything else asyncpg raises is the connection's, the server's or the
# pool's, and passes: a connection lost or terminated (class 08, 57), too many
# connections (53), a serialization failure or deadlock (40), a pool closed or
# timed out, the network.
_DRIVER_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


class _Mapped(DriverErrors):
    """The one place asyncpg's exceptions become the store's: every call into
    asyncpg (pool, transaction, statement) runs inside ``with _DRIVER:``."""

    def translate(self, exc: BaseException) -> Exception | None:
        if isinstance(exc, asyncpg.UniqueViolationError):
            return Conflict(str(exc))
        if isinstance(exc, _DATA_ERRORS):
            return DataRejected(f"{self.prefix} refused a value: {exc}")
        if isinstance(exc, _DRIVER_ERRORS):
            return StoreUnavailable(f"{self.prefix}: {exc}")
        return None


_DRIVER = _Mapped("Postgres")
_CONNECT = _Mapped("cannot connect to Postgres")


class PostgresDialect(Dialect):
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    types = _TYPES
    migration_lock = f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"
    day_of = _TYPES["day_of"]

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
        counter = iter(range(1, 32768))  # Postgres takes up to 32,767 parameters a statement
        cache[sql] = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)
    return cache[sql]


class _Conn:
    """A pooled asyncpg connection speaking the store's exceptions."""

    def __init__(self, conn: Any) -> None:  # a pooled asyncpg connection
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        with _DRIVER:
            status = await self._conn.execute(_numbered(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetchone(self, sql: str, *args: Any) -> Any:
        with _DRIVER:
            return await self._conn.fetchrow(_numbered(sql), *args)

    async def fetchall(self, sql: str, *args: Any) -> Sequence[Any]:
        with _DRIVER:
            return list(await self._conn.fetch(_numbered(sql), *args))


# Types of EVENT_COLUMNS, in order, for inserting a batch as one array per column.
_EVENT_TYPES = (
    ["text"] * 7
    + ["integer"]
    + ["bigint"] * 5
    + ["numeric", "integer", "numeric", "numeric", "text"]
    + ["numeric", "boolean", "boolean", "timestamptz"]
    + ["text", "text", "text", "text", "integer"]
    + ["numeric", "numeric", "text"]
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
        columns = [list(column) for column in zip(*(event_row(self.dialect, e) for e in events), strict=True)]
        return {row["request_id"] for row in await conn.fetchall(_INSERT_EVENTS, *columns)}

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> PostgresStore:
        with _CONNECT:
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=10)
        return cls(pool)

    async def close(self) -> None:
        """Close the pool; if its server is gone and it does not close in
        time, its connections are dropped (shutdown never waits on them)."""
        try:
            with _DRIVER:
                await asyncio.wait_for(self._pool.close(), _CLOSE_S)
        except StoreUnavailable:
            self._pool.terminate()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self._acquire() as conn:
            with _DRIVER:
                tx = conn.transaction()
                await tx.start()
            try:
                yield _Conn(conn)
            except BaseException:
                await _quietly(tx.rollback)
                raise
            with _DRIVER:
                await tx.commit()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        async with self._acquire() as conn:
            yield _Conn(conn)

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Any]:
        with _DRIVER:
            conn = await self._pool.acquire(timeout=10)
        try:
            yield conn
        finally:
            await _quietly(lambda: self._pool.release(conn))


async def _quietly(operation: Callable[[], Awaitable[object]]) -> None:
    """Roll back or release after a failure: a broken connection must not hide
    the first error. The call is inside the mapping too, since asyncpg raises
    on a closed connection before it hands back anything to await."""
    with contextlib.suppress(StoreUnavailable, Conflict), _DRIVER:
        await operation()
