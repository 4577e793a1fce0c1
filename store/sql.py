"""The store's logic, written once for both SQL backends.

A backend supplies connections (:class:`Conn`) and a :class:`Dialect` that
says how money, times and booleans are stored; every transaction here loads a
budget, applies :mod:`taximeter.pricing.budgets` and writes it back, so SQLite
and Postgres behave identically.
"""

from __future__ import annotations

import json
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from taximeter.pricing import budgets
from taximeter.pricing.models import (
    ApiKey,
    BudgetConfig,
    BudgetEvent,
    BudgetState,
    Client,
    OutboxItem,
    Reservation,
    UsageEvent,
)
from taximeter.pricing.money import from_nanos, to_nanos
from taximeter.store.base import (
    Admission,
    Conflict,
    DataRejected,
    NotFound,
    RecordResult,
    ReportRow,
    printable,
)
from taximeter.store.migrations import MIGRATIONS, render

__all__ = ["EVENT_COLUMNS", "Conn", "Dialect", "SqlStore", "sanitised"]

log = logging.getLogger("taximeter.budgets")

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
    types: dict[str, str] = {}  # {money}, {time}, {bool}, {bigint} in the migrations
    migration_lock: str | None = None  # a statement that serialises concurrent migrations

    @abstractmethod
    def money_in(self, amount: Decimal) -> Any: ...

    @abstractmethod
    def money_out(self, value: Any) -> Decimal: ...

    @abstractmethod
    def time_in(self, when: datetime) -> Any: ...

    @abstractmethod
    def time_out(self, value: Any) -> datetime: ...


EVENT_COLUMNS = (
    "request_id, client_id, end_user, conversation, api_type, model, endpoint, status, "
    "input_tokens, output_tokens, cached_tokens, reasoning_tokens, characters, audio_seconds, "
    "images, cost_usd, cost, currency, exchange_rate, estimated, unpriced, created_at"
)
_BUDGET_COLUMNS = (
    "client_id, mode, token_limit, cost_limit, period, timezone, currency, pause_at_limit, "
    "alert_thresholds, period_start, tokens_used, cost_used, paused, pause_reason, version, alerts_fired"
)
_OUTBOX_COLUMNS = "id, client_id, kind, payload, attempts, pending_urls"
_GROUPS = {"api_type": "api_type", "model": "model", "end_user": "COALESCE(end_user, '')"}
_BUDGET_ACTIONS = ("reset", "pause", "resume")


class SqlStore(ABC):
    """:class:`~taximeter.store.base.Store` over any :class:`Dialect`."""

    dialect: Dialect
    # Told of every budget event as it is written (metrics); inside the
    # transaction, so a rare rolled-back one is still counted.
    _observers: tuple[Callable[[BudgetEvent], None], ...] = ()
    _last_event_micros = 0  # keeps event ids increasing within this process

    def observe(self, callback: Callable[[BudgetEvent], None]) -> None:
        self._observers = (*self._observers, callback)

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

    # -- clients and keys ----------------------------------------------------

    async def create_client(self, client_id: str, name: str, now: datetime) -> Client:
        async with self.transaction() as conn:
            touched = await conn.execute(
                "INSERT INTO clients (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
                client_id,
                name,
                self.dialect.time_in(now),
            )
        if not touched:
            raise Conflict(f"client {client_id!r} already exists")
        return Client(client_id, name, now)

    async def rename_client(self, client_id: str, name: str) -> None:
        async with self.transaction() as conn:
            if not await conn.execute("UPDATE clients SET name = ? WHERE id = ?", name, client_id):
                raise NotFound(f"no client {client_id!r}")

    async def get_client(self, client_id: str) -> Client | None:
        async with self.connection() as conn:
            row = await conn.fetchone("SELECT id, name, created_at FROM clients WHERE id = ?", client_id)
        return None if row is None else self._client(row)

    async def list_clients(self) -> list[Client]:
        async with self.connection() as conn:
            rows = await conn.fetchall("SELECT id, name, created_at FROM clients ORDER BY id")
        return [self._client(r) for r in rows]

    async def create_key(self, key: ApiKey) -> ApiKey:
        async with self.transaction() as conn:
            if await conn.fetchone("SELECT id FROM clients WHERE id = ?", key.client_id) is None:
                raise NotFound(f"no client {key.client_id!r}")
            touched = await conn.execute(
                "INSERT INTO api_keys (prefix, client_id, key_hash, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                key.prefix,
                key.client_id,
                key.key_hash,
                self.dialect.time_in(key.created_at),
            )
        if not touched:
            raise Conflict("key prefix already in use")
        return key

    async def find_key(self, prefix: str) -> ApiKey | None:
        async with self.connection() as conn:
            row = await conn.fetchone(
                "SELECT prefix, client_id, key_hash, created_at, revoked_at FROM api_keys WHERE prefix = ?",
                prefix,
            )
        return None if row is None else self._key(row)

    async def list_keys(self, client_id: str) -> list[ApiKey]:
        async with self.connection() as conn:
            rows = await conn.fetchall(
                "SELECT prefix, client_id, key_hash, created_at, revoked_at FROM api_keys "
                "WHERE client_id = ? ORDER BY created_at, prefix",
                client_id,
            )
        return [self._key(r) for r in rows]

    async def revoke_key(self, prefix: str, now: datetime) -> ApiKey | None:
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL",
                self.dialect.time_in(now),
                prefix,
            )
            row = await conn.fetchone(
                "SELECT prefix, client_id, key_hash, created_at, revoked_at FROM api_keys WHERE prefix = ?",
                prefix,
            )
        return None if row is None else self._key(row)

    # -- budgets -----------------------------------------------------------------

    async def put_budget(self, config: BudgetConfig, now: datetime) -> BudgetState:
        async with self.transaction() as conn:
            if await conn.fetchone("SELECT id FROM clients WHERE id = ?", config.client_id) is None:
                raise NotFound(f"no client {config.client_id!r}")
            old = await self._locked_budget(conn, config.client_id)
            state = budgets.configure(old, config, now)
            if old is None:
                await conn.execute(
                    f"INSERT INTO budgets ({_BUDGET_COLUMNS}, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    *self._budget_values(state),
                    self.dialect.time_in(now),
                )
            before = old or state
            if old is None or state.period_start != old.period_start:
                # A new budget, or a new period: it counts what the ledger
                # already holds since its start, so counters and ledger agree
                # (and a client already past the new limit is paused now).
                tokens, cost_nanos = await self._totals(conn, config.client_id, state.period_start)
                zero = replace(state, tokens_used=0, cost_used_nanos=0, alerts_fired=())
                before = old or zero
                state = budgets.apply_usage(zero, tokens, cost_nanos)
            state = await self._write_budget(conn, before, state, now)
        return state

    async def get_budget(self, client_id: str, now: datetime) -> BudgetState | None:
        """The budget in the period containing ``now``. A read that writes: if
        a boundary has passed, the rollover is persisted first (with its reset
        event), so the counters and the outbox agree with what is returned."""
        async with self.connection() as conn:
            row = await conn.fetchone(f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE client_id = ?", client_id)
        if row is None:
            return None
        state = self._budget(row)
        if budgets.roll(state, now) is state:
            return state
        return await self._roll_over(client_id, now)

    async def _roll_over(self, client_id: str, now: datetime) -> BudgetState | None:
        """Persist the rollover of a budget whose period has ended, under its
        row lock (another process may have rolled it meanwhile); None if the
        budget is gone."""
        async with self.transaction() as conn:
            locked = await self._locked_budget(conn, client_id)
            return None if locked is None else await self._rolled(conn, locked, now)

    async def list_budgets(self, now: datetime) -> list[BudgetState]:
        """Every budget, each read as :meth:`get_budget` does: a budget whose
        period has ended is rolled over and written on the way."""
        async with self.connection() as conn:
            rows = await conn.fetchall("SELECT client_id FROM budgets ORDER BY client_id")
        states = [await self.get_budget(r["client_id"], now) for r in rows]
        return [s for s in states if s is not None]

    async def delete_budget(self, client_id: str) -> bool:
        async with self.transaction() as conn:
            return bool(await conn.execute("DELETE FROM budgets WHERE client_id = ?", client_id))

    async def change_budget(self, client_id: str, action: str, now: datetime) -> BudgetState | None:
        if action not in _BUDGET_ACTIONS:
            raise ValueError(f"unknown budget action {action!r}")
        async with self.transaction() as conn:
            old = await self._locked_budget(conn, client_id)
            if old is None:
                return None
            state = budgets.roll(old, now)
            if action == "reset":
                state = budgets.reset(state, now)  # counting restarts now
            else:
                pause = action == "pause"
                state = replace(
                    state,
                    paused=pause,
                    pause_reason=budgets.MANUAL if pause else None,
                    version=state.version + 1,
                )
            state = await self._write_budget(conn, old, state, now)
        return state

    # -- ledger ------------------------------------------------------------------

    async def record(self, event: UsageEvent) -> RecordResult:
        return (await self.record_many([event]))[0]

    async def record_many(self, events: list[UsageEvent]) -> list[RecordResult]:
        """Record a batch in one transaction, each event as :meth:`record` does.
        Each budget is locked and written once, with the events its net
        change raises."""
        results: list[RecordResult] = []
        events = [sanitised(e) for e in events]
        async with self.transaction() as conn:
            inserted = await self._insert_events(conn, events)
            budgets_in_batch: dict[str, tuple[BudgetState | None, BudgetState | None]] = {}
            last_seen: datetime | None = None
            for event in events:
                if event.request_id not in inserted:  # recorded before (or twice in this batch)
                    results.append(RecordResult(recorded=False, state=None))
                    continue
                inserted.discard(event.request_id)
                if event.client_id not in budgets_in_batch:
                    locked = await self._locked_budget(conn, event.client_id)
                    budgets_in_batch[event.client_id] = (locked, locked)
                original, current = budgets_in_batch[event.client_id]
                if current is None:
                    results.append(RecordResult(recorded=True, state=None))
                    continue
                new = budgets.roll(current, event.created_at)
                if event.created_at >= new.period_start:
                    new = budgets.apply_usage(new, event.tokens, to_nanos(event.cost))
                budgets_in_batch[event.client_id] = (original, new)
                results.append(RecordResult(recorded=True, state=new))
                last_seen = max(last_seen or event.created_at, event.created_at)
            for original, final in budgets_in_batch.values():
                if original is not None and final is not None and final is not original:
                    await self._write_budget(conn, original, final, last_seen or final.period_start)
        return results

    @abstractmethod
    async def _insert_events(self, conn: Conn, events: list[UsageEvent]) -> set[str]:
        """Insert the events not recorded yet (a request id already there, or
        twice in ``events``, goes in once) and drop the store-held reservations
        of the calls inserted; the request ids inserted. In as few round trips
        as the backend allows."""

    async def quarantine(self, event: UsageEvent, error: str, now: datetime) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "INSERT INTO quarantined_events (request_id, client_id, payload, error, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                printable(event.request_id),
                printable(event.client_id),
                _escaped_json(event),
                printable(error, 2000),
                self.dialect.time_in(now),
            )

    async def list_events(self, client_id: str | None, limit: int) -> list[UsageEvent]:
        where, args = ("WHERE client_id = ?", [client_id]) if client_id else ("", [])
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {EVENT_COLUMNS} FROM usage_events {where} "
                "ORDER BY created_at DESC, request_id DESC LIMIT ?",
                *args,
                limit,
            )
        return [self._event(r) for r in rows]

    async def spend_by_api_type(self, client_id: str, since: datetime) -> dict[str, Decimal]:
        async with self.connection() as conn:
            rows = await conn.fetchall(
                "SELECT api_type, SUM(cost) AS cost FROM usage_events "
                "WHERE client_id = ? AND created_at >= ? GROUP BY api_type ORDER BY api_type",
                client_id,
                self.dialect.time_in(since),
            )
        return {r["api_type"]: self.dialect.money_out(r["cost"]) for r in rows}

    async def usage_report(
        self, client_id: str | None, start: datetime, end: datetime, group_by: str
    ) -> list[ReportRow]:
        key = self.dialect.day_of if group_by == "day" else _GROUPS[group_by]
        where = "created_at >= ? AND created_at < ?"
        args: list[Any] = [self.dialect.time_in(start), self.dialect.time_in(end)]
        if client_id is not None:
            where += " AND client_id = ?"
            args.append(client_id)
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {key} AS key, COUNT(*) AS requests, SUM(input_tokens) AS input_tokens, "
                "SUM(output_tokens) AS output_tokens, SUM(cost_usd) AS cost_usd, SUM(cost) AS cost "
                f"FROM usage_events WHERE {where} GROUP BY {key} ORDER BY {key}",
                *args,
            )
        return [
            ReportRow(
                key=str(r["key"]),
                requests=int(r["requests"]),
                input_tokens=int(r["input_tokens"]),
                output_tokens=int(r["output_tokens"]),
                cost_usd=self.dialect.money_out(r["cost_usd"]),
                cost=self.dialect.money_out(r["cost"]),
            )
            for r in rows
        ]

    async def ledger_totals(self, client_id: str, since: datetime) -> tuple[int, int]:
        async with self.connection() as conn:
            return await self._totals(conn, client_id, since)

    async def _totals(self, conn: Conn, client_id: str, since: datetime) -> tuple[int, int]:
        row = await conn.fetchone(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) AS tokens, "
            "SUM(cost) AS cost FROM usage_events WHERE client_id = ? AND created_at >= ?",
            client_id,
            self.dialect.time_in(since),
        )
        assert row is not None  # an aggregate always returns a row
        return int(row["tokens"]), to_nanos(self.dialect.money_out(row["cost"]))

    # -- rows <-> models -------------------------------------------------------------

    async def _locked_budget(self, conn: Conn, client_id: str) -> BudgetState | None:
        row = await conn.fetchone(
            f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE client_id = ?{self.dialect.for_update}",
            client_id,
        )
        return None if row is None else self._budget(row)

    async def _write_budget(
        self, conn: Conn, old: BudgetState, new: BudgetState, now: datetime
    ) -> BudgetState:
        """Write ``new`` over ``old``, with the budget events the change raises
        put in the outbox in the same transaction."""
        state, events = budgets.transition(old, new)
        values = self._budget_values(state)
        await conn.execute(
            "UPDATE budgets SET mode = ?, token_limit = ?, cost_limit = ?, period = ?, timezone = ?, "
            "currency = ?, pause_at_limit = ?, alert_thresholds = ?, period_start = ?, tokens_used = ?, "
            "cost_used = ?, paused = ?, pause_reason = ?, version = ?, alerts_fired = ?, updated_at = ? "
            "WHERE client_id = ?",
            *values[1:],
            self.dialect.time_in(now),
            values[0],
        )
        for event in events:
            event_id = self._event_id(now)
            await conn.execute(
                "INSERT INTO alert_outbox (id, client_id, kind, payload, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                event_id,
                event.client_id,
                event.kind,
                json.dumps(budgets.event_payload(event, state, event_id, now)),
                self.dialect.time_in(now),
                self.dialect.time_in(now),
            )
            for observer in self._observers:
                observer(event)
            log.info(
                "budget_event",
                extra={
                    "client": event.client_id,
                    "kind": event.kind,
                    "metric": event.metric,
                    "threshold": None if event.threshold is None else str(event.threshold),
                    "event_id": event_id,
                },
            )
        return state

    async def _rolled(self, conn: Conn, state: BudgetState, now: datetime) -> BudgetState:
        """``state`` moved to the period containing ``now`` by
        :func:`~taximeter.pricing.budgets.roll`; written, with the reset event
        it raises, when a boundary has passed. ``state`` must be locked."""
        rolled = budgets.roll(state, now)
        if rolled is state:
            return state
        return await self._write_budget(conn, state, rolled, now)

    def _event_id(self, now: datetime) -> str:
        """A time-ordered id: the outbox delivers in the order events happened,
        even several in one microsecond (one transaction, or a stopped clock)."""
        micros = max(int(now.timestamp() * 1_000_000), self._last_event_micros + 1)
        self._last_event_micros = micros
        return f"evt_{micros:014x}{uuid.uuid4().hex[:16]}"

    # -- reservations held by the store (the gate's fallback) ----------------------

    async def reserve(self, reservation: Reservation, now: datetime) -> Admission:
        """Check the budget and hold ``reservation``, under the budget's row
        lock: the same rule as the gates, for when they cannot be reached."""
        async with self.transaction() as conn:
            state = await self._locked_budget(conn, reservation.client_id)
            if state is not None:
                state = await self._rolled(conn, state, now)
                row = await conn.fetchone(
                    "SELECT COALESCE(SUM(tokens), 0) AS tokens, SUM(cost) AS cost FROM reservations "
                    "WHERE client_id = ?",
                    reservation.client_id,
                )
                assert row is not None  # an aggregate always returns a row
                reserved_cost = to_nanos(self.dialect.money_out(row["cost"]))
                outcome, reason = budgets.admission(state, int(row["tokens"]), reserved_cost)
                if outcome != "ok":
                    return Admission(outcome, reason)
            await self._insert_reservation(conn, reservation)
        return Admission("ok")

    async def hold_reservations(self, reservations: list[Reservation]) -> None:
        """Hold reservations admitted elsewhere (by a gate that went away), with
        no check, so the next admission here counts them; one already held
        stays as it is."""
        async with self.transaction() as conn:
            for reservation in reservations:
                await self._insert_reservation(conn, reservation)

    async def _insert_reservation(self, conn: Conn, reservation: Reservation) -> None:
        await conn.execute(
            "INSERT INTO reservations (request_id, client_id, tokens, cost, expires_at, event) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
            reservation.request_id,
            reservation.client_id,
            reservation.tokens,
            self.dialect.money_in(from_nanos(reservation.cost_nanos)),
            self.dialect.time_in(reservation.expires_at),
            reservation.event.to_json(),
        )

    async def extend_reservations(self, reservations: list[Reservation]) -> None:
        """Move store-held reservations' expiry to theirs (live calls); one no
        longer held is not held again."""
        async with self.transaction() as conn:
            for reservation in reservations:
                await conn.execute(
                    "UPDATE reservations SET expires_at = ? WHERE request_id = ?",
                    self.dialect.time_in(reservation.expires_at),
                    reservation.request_id,
                )

    async def drop_reservation(self, request_id: str) -> None:
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM reservations WHERE request_id = ?", request_id)

    async def claim_expired_reservations(self, now: datetime, limit: int) -> list[Reservation]:
        """Take expired store-held reservations, each by exactly one caller."""
        async with self.transaction() as conn:
            rows = await conn.fetchall(
                "SELECT request_id, cost, expires_at, event FROM reservations WHERE expires_at <= ? "
                f"ORDER BY expires_at LIMIT ?{self.dialect.skip_locked}",
                self.dialect.time_in(now),
                limit,
            )
            for row in rows:
                await conn.execute("DELETE FROM reservations WHERE request_id = ?", row["request_id"])
        return [
            Reservation(
                event=UsageEvent.from_json(r["event"]),
                cost_nanos=to_nanos(self.dialect.money_out(r["cost"])),
                expires_at=self.dialect.time_out(r["expires_at"]),
            )
            for r in rows
        ]

    # -- dashboard sessions ------------------------------------------------------

    async def create_session(self, id_hash: str, scope: str, now: datetime, expires_at: datetime) -> None:
        """Keep a new dashboard session (by the hash of its id); expired ones are
        purged in the same transaction, so the table stays small."""
        async with self.transaction() as conn:
            await conn.execute(
                "DELETE FROM dashboard_sessions WHERE expires_at <= ?", self.dialect.time_in(now)
            )
            await conn.execute(
                "INSERT INTO dashboard_sessions (id_hash, scope, created_at, expires_at) VALUES (?, ?, ?, ?)",
                id_hash,
                scope,
                self.dialect.time_in(now),
                self.dialect.time_in(expires_at),
            )

    async def session_valid(self, id_hash: str, scope: str, now: datetime) -> bool:
        async with self.connection() as conn:
            row = await conn.fetchone(
                "SELECT id_hash FROM dashboard_sessions WHERE id_hash = ? AND scope = ? AND expires_at > ?",
                id_hash,
                scope,
                self.dialect.time_in(now),
            )
        return row is not None

    async def end_session(self, id_hash: str) -> None:
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", id_hash)

    # -- the alert outbox ---------------------------------------------------------

    async def claim_alerts(self, now: datetime, limit: int, lease: timedelta) -> list[OutboxItem]:
        """Up to ``limit`` undelivered events that are due, each leased to the
        caller for ``lease`` (another process does not take it meanwhile)."""
        async with self.transaction() as conn:
            rows = await conn.fetchall(
                f"SELECT {_OUTBOX_COLUMNS} FROM alert_outbox WHERE delivered_at IS NULL "
                f"AND next_attempt_at <= ? ORDER BY created_at, id LIMIT ?{self.dialect.skip_locked}",
                self.dialect.time_in(now),
                limit,
            )
            for row in rows:
                await conn.execute(
                    "UPDATE alert_outbox SET next_attempt_at = ? WHERE id = ?",
                    self.dialect.time_in(now + lease),
                    row["id"],
                )
        return [
            OutboxItem(
                id=r["id"],
                client_id=r["client_id"],
                kind=r["kind"],
                payload=r["payload"],
                attempts=int(r["attempts"]),
                pending_urls=None if r["pending_urls"] is None else tuple(json.loads(r["pending_urls"])),
            )
            for r in rows
        ]

    async def finish_alert(
        self, item: OutboxItem, failed_urls: list[str], now: datetime, retry_at: datetime, error: str | None
    ) -> None:
        """Mark ``item`` delivered (no failed URL), or schedule a retry of the failed ones."""
        async with self.transaction() as conn:
            if not failed_urls:
                await conn.execute(
                    "UPDATE alert_outbox SET delivered_at = ?, pending_urls = '[]', attempts = ? "
                    "WHERE id = ?",
                    self.dialect.time_in(now),
                    item.attempts + 1,
                    item.id,
                )
            else:
                await conn.execute(
                    "UPDATE alert_outbox SET pending_urls = ?, attempts = ?, next_attempt_at = ?, "
                    "last_error = ? WHERE id = ?",
                    json.dumps(failed_urls),
                    item.attempts + 1,
                    self.dialect.time_in(retry_at),
                    error,
                    item.id,
                )

    async def list_alerts(self, client_id: str) -> list[tuple[OutboxItem, bool]]:
        """Every event of a client, oldest first, with whether it was delivered."""
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {_OUTBOX_COLUMNS}, delivered_at FROM alert_outbox WHERE client_id = ? "
                "ORDER BY created_at, id",
                client_id,
            )
        return [
            (
                OutboxItem(r["id"], r["client_id"], r["kind"], r["payload"], int(r["attempts"]), None),
                r["delivered_at"] is not None,
            )
            for r in rows
        ]

    def _budget_values(self, state: BudgetState) -> list[Any]:
        c, d = state.config, self.dialect
        return [
            c.client_id,
            c.mode,
            c.token_limit,
            None if c.cost_limit is None else d.money_in(c.cost_limit),
            c.period,
            c.timezone,
            c.currency,
            c.pause_at_limit,
            json.dumps([str(t) for t in c.alert_thresholds]),
            d.time_in(state.period_start),
            state.tokens_used,
            d.money_in(from_nanos(state.cost_used_nanos)),
            state.paused,
            state.pause_reason,
            state.version,
            json.dumps(list(state.alerts_fired)),
        ]

    def _budget(self, row: Row) -> BudgetState:
        d = self.dialect
        config = BudgetConfig(
            client_id=row["client_id"],
            mode=row["mode"],
            period=row["period"],
            timezone=row["timezone"],
            currency=row["currency"],
            token_limit=row["token_limit"],
            cost_limit=None if row["cost_limit"] is None else d.money_out(row["cost_limit"]),
            pause_at_limit=bool(row["pause_at_limit"]),
            alert_thresholds=tuple(Decimal(t) for t in json.loads(row["alert_thresholds"])),
        )
        return BudgetState(
            config=config,
            period_start=d.time_out(row["period_start"]),
            tokens_used=int(row["tokens_used"]),
            cost_used_nanos=to_nanos(d.money_out(row["cost_used"])),
            paused=bool(row["paused"]),
            pause_reason=row["pause_reason"],
            version=int(row["version"]),
            alerts_fired=tuple(json.loads(row["alerts_fired"])),
        )

    def _event_values(self, e: UsageEvent) -> list[Any]:
        d = self.dialect
        return [
            e.request_id,
            e.client_id,
            e.end_user,
            e.conversation,
            e.api_type,
            e.model,
            e.endpoint,
            e.status,
            e.input_tokens,
            e.output_tokens,
            e.cached_tokens,
            e.reasoning_tokens,
            e.characters,
            d.money_in(e.audio_seconds),
            e.images,
            d.money_in(e.cost_usd),
            d.money_in(e.cost),
            e.currency,
            d.money_in(e.exchange_rate),
            e.estimated,
            e.unpriced,
            d.time_in(e.created_at),
        ]

    def _event(self, r: Row) -> UsageEvent:
        d = self.dialect
        return UsageEvent(
            request_id=r["request_id"],
            client_id=r["client_id"],
            end_user=r["end_user"],
            conversation=r["conversation"],
            api_type=r["api_type"],
            model=r["model"],
            endpoint=r["endpoint"],
            status=int(r["status"]),
            input_tokens=int(r["input_tokens"]),
            output_tokens=int(r["output_tokens"]),
            cached_tokens=int(r["cached_tokens"]),
            reasoning_tokens=int(r["reasoning_tokens"]),
            characters=int(r["characters"]),
            audio_seconds=d.money_out(r["audio_seconds"]),
            images=int(r["images"]),
            cost_usd=d.money_out(r["cost_usd"]),
            cost=d.money_out(r["cost"]),
            currency=r["currency"],
            exchange_rate=d.money_out(r["exchange_rate"]),
            estimated=bool(r["estimated"]),
            unpriced=bool(r["unpriced"]),
            created_at=d.time_out(r["created_at"]),
        )

    def _client(self, row: Row) -> Client:
        return Client(row["id"], row["name"], self.dialect.time_out(row["created_at"]))

    def _key(self, row: Row) -> ApiKey:
        return ApiKey(
            prefix=row["prefix"],
            client_id=row["client_id"],
            key_hash=row["key_hash"],
            created_at=self.dialect.time_out(row["created_at"]),
            revoked=row["revoked_at"] is not None,
        )


_TEXT_FIELDS = (
    "request_id",
    "client_id",
    "end_user",
    "conversation",
    "api_type",
    "model",
    "endpoint",
    "currency",
)
_NUMBER_FIELDS = ("cost_usd", "cost", "exchange_rate", "audio_seconds")
_MONEY_LIMIT = Decimal(10) ** 19  # quantize() keeps 28 digits: 19 before the point, 9 after


def sanitised(event: UsageEvent) -> UsageEvent:
    """``event`` as the store binds it: its text without NUL and lone
    surrogates, which no legitimate value carries and Postgres text cannot
    hold (the proxy's edge refuses them too; this is the store's own guard).
    Raises DataRejected for a value no store can keep: text that is not text,
    a money figure that is not finite or too large to quantize."""
    changes: dict[str, str] = {}
    for name in _TEXT_FIELDS:
        value = getattr(event, name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataRejected(f"{name} is not text")
        if value.isascii() and "\x00" not in value:
            continue  # the usual case: nothing to strip
        changes[name] = value.encode("utf-8", "ignore").decode("utf-8").replace("\x00", "")
    for name in _NUMBER_FIELDS:
        number = getattr(event, name)
        if isinstance(number, Decimal) and not (number.is_finite() and abs(number) < _MONEY_LIMIT):
            raise DataRejected(f"{name} is not a finite number within the ledger's range: {number}")
    return replace(event, **changes) if changes else event  # type: ignore[arg-type]


def _escaped_json(event: UsageEvent) -> str:
    """``event`` as JSON, every non-ASCII character and control character
    escaped (``\\u0000``, ``\\ud800``): storable whatever it carries, and read
    back by :meth:`UsageEvent.from_json`."""
    data = {name: getattr(event, name) for name in UsageEvent.__dataclass_fields__}
    return json.dumps(data, ensure_ascii=True, default=_json_default)


def _json_default(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
