"""The usage ledger in SQL: recording events into their budgets, setting
aside those refused, and the reads and reports over it."""

from __future__ import annotations

import json
from abc import abstractmethod
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState, Hold, UsageEvent
from taximeter.pricing.money import to_nanos
from taximeter.store.base import DataRejected, RecordResult, ReportRow, printable
from taximeter.store.sql.budget_writes import BudgetWrites, totals_since
from taximeter.store.sql.core import Conn, Dialect
from taximeter.store.sql.rows import EVENT_COLUMNS, event_from_row

__all__ = ["SqlLedger", "limit_used_in", "sanitised"]

_EXPORT_ROWS_PER_INSERT = 500  # 3 values a row, far below SQLite's 32,766 variables
_GROUPS = {
    "api_type": "api_type",
    "model": "model",
    "end_user": "COALESCE(end_user, '')",
    "client_model": "client_id || '/' || model",  # a client id has no "/"
}


class SqlLedger(BudgetWrites):
    """:class:`~taximeter.store.base.Ledger` and
    :class:`~taximeter.store.base.LedgerReads` in SQL."""

    async def record(self, event: UsageEvent) -> RecordResult:
        """One event, as :meth:`record_many` records a batch."""
        return (await self.record_many([event]))[0]

    async def record_many(self, events: list[UsageEvent]) -> list[RecordResult]:
        """Record a batch in one transaction (see
        :meth:`~taximeter.store.base.Ledger.record_many`). Each budget is
        locked and written once, with the events its net change raises."""
        results: list[RecordResult] = []
        events = [sanitised(e) for e in events]
        async with self.transaction() as conn:
            inserted = await self._insert_events(conn, events)
            await self._owe_exports(conn, [e for e in events if e.request_id in inserted])
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

    # The billing sinks every recorded event is owed to (``exports``); set at start-up.
    export_sinks: tuple[str, ...] = ()

    def export_to(self, sinks: list[str]) -> None:
        self.export_sinks = tuple(sinks)

    async def _owe_exports(self, conn: Conn, events: list[UsageEvent]) -> None:
        """One outbox row per sink and event, in the transaction that records them."""
        rows = [
            (sink, e.request_id, self.dialect.time_in(e.created_at))
            for e in events
            for sink in self.export_sinks
        ]
        for start in range(0, len(rows), _EXPORT_ROWS_PER_INSERT):
            chunk = rows[start : start + _EXPORT_ROWS_PER_INSERT]
            await conn.execute(
                "INSERT INTO export_outbox (sink, request_id, next_attempt_at) VALUES "
                + ", ".join(["(?, ?, ?)"] * len(chunk))
                + " ON CONFLICT (sink, request_id) DO NOTHING",
                *(value for row in chunk for value in row),
            )

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
        return [event_from_row(self.dialect, r) for r in rows]

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
        if group_by == "day":
            key = self.dialect.day_of
        elif group_by == "day_api_type":  # "2026-12-01/chat": a day's spend stacked by kind
            key = f"{self.dialect.day_of} || '/' || api_type"
        else:
            key = _GROUPS[group_by]
        where = "created_at >= ? AND created_at < ?"
        args: list[Any] = [self.dialect.time_in(start), self.dialect.time_in(end)]
        if client_id is not None:
            where += " AND client_id = ?"
            args.append(client_id)
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {key} AS key, currency, COUNT(*) AS requests, SUM(input_tokens) AS input_tokens, "
                "SUM(output_tokens) AS output_tokens, SUM(cost_usd) AS cost_usd, SUM(cost) AS cost, "
                # Events from before markups have no list cost: they were charged at list price.
                "SUM(COALESCE(list_cost, cost)) AS list_cost "
                f"FROM usage_events WHERE {where} GROUP BY {key}, currency ORDER BY {key}, currency",
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
                list_cost=self.dialect.money_out(r["list_cost"]),
                currency=r["currency"],
            )
            for r in rows
        ]

    async def limit_used(self, hold: Hold, client_id: str) -> int:
        async with self.connection() as conn:
            return await limit_used_in(conn, self.dialect, hold, client_id)

    async def ledger_totals(self, client_id: str, since: datetime) -> tuple[int, int]:
        """Tokens and cost (nanos) in the ledger since ``since``: what a
        budget's counters must equal, and a client without one has used."""
        async with self.connection() as conn:
            return await totals_since(conn, self.dialect, client_id, since)


async def limit_used_in(conn: Conn, d: Dialect, hold: Hold, client_id: str) -> int:
    """What the ledger counts on ``hold``'s limit in its window (see
    :meth:`~taximeter.store.base.LedgerReads.limit_used`)."""
    limit = hold.limit
    where = "client_id = ? AND created_at >= ?"
    args: list[Any] = [client_id, d.time_in(hold.window_start)]
    if hold.window_end is not None:
        where += " AND created_at < ?"
        args.append(d.time_in(hold.window_end))
    if limit.per == "end_user":
        where += " AND COALESCE(end_user, '') = ?"
        args.append(hold.end_user)
    rows = await conn.fetchall(
        "SELECT model, SUM(input_tokens + output_tokens) AS tokens, SUM(cost) AS cost, "
        f"COUNT(*) AS calls FROM usage_events WHERE {where} GROUP BY model",
        *args,
    )
    used = 0
    for row in rows:
        if not limit.covers(row["model"]):
            continue
        tokens, cost_nanos = int(row["tokens"]), to_nanos(d.money_out(row["cost"]))
        used += int(row["calls"]) if limit.metric == "requests" else hold.used_by(tokens, cost_nanos)
    return used


_TEXT_FIELDS = (
    "request_id",
    "client_id",
    "end_user",
    "conversation",
    "api_type",
    "model",
    "endpoint",
    "currency",
    "service_tier",
    "price_source",
    "upstream",
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
