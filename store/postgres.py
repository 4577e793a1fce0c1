"""The production store: Postgres through an asyncpg pool.

Money is ``NUMERIC`` (asyncpg hands back Decimal), times ``TIMESTAMPTZ``.
Budget rows are locked with ``SELECT ... FOR UPDATE`` inside each write, so
any number of proxy processes can record against one budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
from taximeter.store.ledger_months import (
    INSERT_EVENTS,
    PARTITION_EVENTS,
    Month,
    create_month,
    following,
    month_in,
    month_of,
    month_table,
    months_before,
)
from taximeter.store.sql import Conn, Dialect, SqlStore
from taximeter.store.sql.rows import event_row

__all__ = ["PostgresStore"]

log = logging.getLogger("taximeter.store")

_TYPES = {
    "money": "NUMERIC(30, 9)",
    "time": "TIMESTAMPTZ",
    "bool": "BOOLEAN",
    "bigint": "BIGINT",
    "day_of": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    # Writers wait while the daily totals are summed from the events (readers do not).
    "lock_events": "LOCK TABLE usage_events IN SHARE ROW EXCLUSIVE MODE",
    "partition_events": PARTITION_EVENTS,
}
_MIGRATION_LOCK = 0x7A61_6D65  # any constant; one advisory lock serialises concurrent start-ups
_CHECK_VIOLATION = "23514"  # also "no partition of relation ... found for row"
_MONTHS_LOCK = 0x7A61_6D66  # serialises making the ledger's month partitions
_TRIM_LOCK = 0x7A61_6D67  # one process drops old months at a time
# Making or dropping a partition locks the whole ledger: it waits this long for
# readers (a long export) before it gives up, rather than stall every writer behind it.
_DDL_LOCK_TIMEOUT = "5s"
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
            return DataRejected(f"{self.prefix} refused a value: {exc}", getattr(exc, "sqlstate", None))
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
    # By the id's claim: its time picks the one month partition to look in.
    events_by_id = (
        "event_ids i JOIN usage_events e ON e.request_id = i.request_id AND e.created_at = i.created_at",
        "i.request_id",
    )
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


class PostgresStore(SqlStore):
    """:class:`~taximeter.store.base.Store` on Postgres."""

    dialect = PostgresDialect()

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._months: set[Month] = set()  # month partitions known to exist
        self._months_read = False

    async def _insert_events(self, conn: Conn, events: list[UsageEvent]) -> set[str]:
        # One round trip for the whole batch: a column per array.
        if not events:
            return set()
        columns = [list(column) for column in zip(*(event_row(self.dialect, e) for e in events), strict=True)]
        return {row["request_id"] for row in await conn.fetchall(INSERT_EVENTS, *columns)}

    async def _prepare_events(self, events: list[UsageEvent]) -> None:
        """Make the month partitions ``events`` fall in where missing (in a
        transaction of their own), and the month after each, so next month's
        is there before it begins (that one only as well as it can: a failure
        is told and tried again by a later batch)."""
        months = {month_of(e.created_at) for e in events}
        await self._make_months(months - self._months)
        ahead = {following(m) for m in months} - months - self._months
        if ahead:
            try:
                await self._make_months(ahead)
            except StoreUnavailable as exc:
                log.warning("ledger_month_not_made", extra={"error": str(exc)})

    async def _make_months(self, months: set[Month]) -> None:
        if months and not self._months_read:  # once: the months made already, without a lock
            async with self.connection() as conn:
                rows = await conn.fetchall(
                    "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'usage_events'::regclass"
                )
            self._months |= {m for m in (month_in(r["name"]) for r in rows) if m is not None}
            self._months_read = True
            months -= self._months
        if not months:
            return
        async with self.transaction() as conn:
            await conn.execute(f"SELECT pg_advisory_xact_lock({_MONTHS_LOCK})")
            await conn.execute(f"SET LOCAL lock_timeout = '{_DDL_LOCK_TIMEOUT}'")
            rows = await conn.fetchall(
                "SELECT relname, relispartition FROM pg_class "
                "WHERE relname = ANY(?::text[]) AND relkind = 'r'",
                [month_table(m) for m in months],
            )
            found = {r["relname"]: r["relispartition"] for r in rows}
            for month in sorted(months):
                table = month_table(month)
                if not found.get(table):  # missing, or there but detached: made and attached
                    for statement in create_month(month):
                        await conn.execute(statement)
        self._months |= months

    def _forget_months(self, error: DataRejected) -> bool:
        # A month partition this process took as made is gone (dropped by the
        # retention of another process): look again before the next try. The
        # ledger has no CHECK constraint: a check violation is its partitions'.
        if error.sqlstate != _CHECK_VIOLATION:
            return False
        self._months.clear()
        self._months_read = False
        return True

    async def drop_events_before(self, cutoff: datetime) -> None:
        """Drop the month partitions that end by ``cutoff`` (whole months
        only), then the ids they claimed and what the export outbox still
        owed of them; the daily totals stay. Each partition is detached
        ``CONCURRENTLY`` (reads and writes of the ledger go on meanwhile),
        then dropped; one process trims at a time, the others skip."""
        dropped: list[str] = []
        async with self.connection() as conn:  # no transaction: DETACH ... CONCURRENTLY runs alone
            got = await conn.fetchone(f"SELECT pg_try_advisory_lock({_TRIM_LOCK}) AS got")
            if got is None or not got["got"]:
                return
            try:
                rows = await conn.fetchall(
                    "SELECT c.relname AS name, c.relispartition AS attached, "
                    "COALESCE(i.inhdetachpending, false) AS pending FROM pg_class c "
                    "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid "
                    "WHERE c.relkind = 'r' AND c.relname LIKE 'usage_events_y%'"
                )
                state = {r["name"]: (r["attached"], r["pending"]) for r in rows}
                for table in months_before(list(state), cutoff):
                    attached, pending = state[table]
                    if attached:  # a detach cut short earlier is finished first
                        how = "FINALIZE" if pending else "CONCURRENTLY"
                        await conn.execute(f"ALTER TABLE usage_events DETACH PARTITION {table} {how}")
                    await conn.execute(f"DROP TABLE {table}")
                    dropped.append(table)
            finally:
                await conn.execute(f"SELECT pg_advisory_unlock({_TRIM_LOCK})")
        self._months = {m for m in self._months if m >= month_of(cutoff)}
        if not dropped:
            return
        kept_from = datetime(*month_of(cutoff), 1, tzinfo=UTC)  # the first month kept
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM event_ids WHERE created_at < ?", kept_from)
            owed = await conn.execute(
                "DELETE FROM export_outbox o WHERE NOT EXISTS "
                "(SELECT 1 FROM event_ids i WHERE i.request_id = o.request_id)"
            )
        log.info("ledger_months_dropped", extra={"months": dropped, "exports_forgotten": owed})

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
