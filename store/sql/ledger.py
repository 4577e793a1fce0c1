"""The usage ledger in SQL: recording events into their budgets, setting
aside those refused, and the reads and reports over it."""

from __future__ import annotations

import json
from abc import abstractmethod
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState, Hold, UsageEvent
from taximeter.pricing.money import to_nanos
from taximeter.pricing.times import utc_day_start
from taximeter.store.base import Clients, DataRejected, RecordResult, ReportRow, printable
from taximeter.store.migrations import DAILY_TOTALS, MIGRATIONS, render
from taximeter.store.sql.budget_writes import BudgetWrites, totals_since
from taximeter.store.sql.core import Conn, Dialect, Row, power_of_two_chunks
from taximeter.store.sql.rows import EVENT_COLUMNS, event_from_row

__all__ = ["SqlLedger", "day_split", "limit_used_in", "sanitised"]

_EXPORT_ROWS_PER_INSERT = 500  # 3 values a row, far below SQLite's 32,766 variables
_DAILY_SUMS = ("requests", "input_tokens", "output_tokens", "cost_usd", "cost", "list_cost")
# The two tables of daily totals: the key of each, and how each grouping reads it.
_DAILY = "usage_daily", ("client_id", "day", "model", "api_type", "currency")
_DAILY_USERS = "usage_daily_users", ("client_id", "day", "end_user", "currency")
_DAILY_ROWS_PER_INSERT = 64  # a power of two: few statement shapes for the drivers to prepare
_DAILY_GROUPS = {
    "api_type": (_DAILY, "api_type"),
    "model": (_DAILY, "model"),
    "client_model": (_DAILY, "client_id || '/' || model"),
    "client_api_type": (_DAILY, "client_id || '/' || api_type"),
    "day": (_DAILY, "day"),
    "day_api_type": (_DAILY, "day || '/' || api_type"),
    "end_user": (_DAILY_USERS, "end_user"),
}
_GROUPS = {
    "api_type": "api_type",
    "model": "model",
    "end_user": "COALESCE(end_user, '')",
    "client_model": "client_id || '/' || model",  # a client id has no "/"
    "client_api_type": "client_id || '/' || api_type",
}


Days = tuple[str, str | None]  # the first whole UTC day, and the day after the last (None: open)
_TRIM_CHUNK = 20_000  # events deleted per transaction when old ones are dropped row by row
Stretch = tuple[datetime, datetime | None]  # [start, end) of events read one by one


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
        events = [sanitised(e) for e in events]
        await self._prepare_events(events)
        try:
            return await self._record(events)
        except DataRejected as exc:
            if not self._forget_months(exc):
                raise
        await self._prepare_events(events)  # once more, having looked again
        return await self._record(events)

    async def _record(self, events: list[UsageEvent]) -> list[RecordResult]:
        results: list[RecordResult] = []
        async with self.transaction() as conn:
            inserted = await self._insert_events(conn, events)
            recorded = _first_of_each([e for e in events if e.request_id in inserted])
            await self._roll_up(conn, recorded)
            await self._owe_exports(conn, recorded)
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

    async def _prepare_events(self, events: list[UsageEvent]) -> None:
        """What the backend needs before ``events`` can be inserted (its own transaction)."""
        return None

    def _forget_months(self, error: DataRejected) -> bool:
        """Whether ``error`` says a place for the events was missing that the
        store took as there (forgotten now: the next try looks again)."""
        return False

    async def drop_events_before(self, cutoff: datetime) -> None:
        """Delete the events recorded before ``cutoff`` and what the export
        outbox still owed of them; the daily totals stay."""
        while True:  # in chunks: recording waits for one at most, not for the whole trim
            async with self.transaction() as conn:
                deleted = await conn.execute(
                    "DELETE FROM usage_events WHERE request_id IN (SELECT request_id FROM usage_events "
                    "WHERE created_at < ? ORDER BY created_at LIMIT ?)",
                    self.dialect.time_in(cutoff),
                    _TRIM_CHUNK,
                )
            if deleted < _TRIM_CHUNK:
                break
        async with self.transaction() as conn:
            await conn.execute(
                "DELETE FROM export_outbox WHERE NOT EXISTS "
                "(SELECT 1 FROM usage_events e WHERE e.request_id = export_outbox.request_id)"
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

    async def list_events(
        self, client_id: str | None, limit: int, before: tuple[datetime, str] | None = None
    ) -> list[UsageEvent]:
        conditions, args = [], []
        if client_id:
            conditions.append("client_id = ?")
            args.append(client_id)
        if before is not None:  # the page after an event: by time, then request id
            conditions.append("(created_at, request_id) < (?, ?)")
            args += [self.dialect.time_in(before[0]), before[1]]
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {EVENT_COLUMNS} FROM usage_events {where}"
                "ORDER BY created_at DESC, request_id DESC LIMIT ?",
                *args,
                limit,
            )
        return [event_from_row(self.dialect, r) for r in rows]

    async def spend_by_api_type(self, client_id: str, since: datetime) -> dict[str, Decimal]:
        spent: dict[str, Decimal] = {}
        for row in await self.usage_report(client_id, since, None, "api_type"):
            spent[row.key] = spent.get(row.key, Decimal(0)) + row.cost
        return dict(sorted(spent.items()))

    async def usage_report(
        self,
        client_id: Clients,
        start: datetime,
        end: datetime | None,
        group_by: str,
        *,
        top: int | None = None,
    ) -> list[ReportRow]:
        """Whole UTC days from the daily totals, the hours at either edge from
        the events themselves (``end`` None: up to now and on), summed in one
        query; with ``top``, only the rows of the ``top`` keys dearest at list
        price (comparable across currencies), dearest first."""
        days, edges = day_split(start, end)
        if (
            edges
            and edges[-1][0] == utc_day_start(edges[-1][0])
            and await self._day_ends_at(client_id, edges[-1])
        ):
            # A window ending inside a day it covers from its start, with nothing
            # recorded after its end that day (today, as a rule): the day's totals are the edge's.
            day = edges.pop()[0]
            days = (
                day.date().isoformat() if days is None else days[0],
                (day + timedelta(days=1)).date().isoformat(),
            )
        parts = [] if days is None else [self._daily_part(client_id, days, group_by)]
        parts += [self._event_part(client_id, *edge, group_by) for edge in edges]
        order = "key, currency" if top is None else f"SUM(cost_usd) DESC, key, currency LIMIT {int(top)}"
        async with self.connection() as conn:
            rows = await conn.fetchall(
                "SELECT key, currency, SUM(requests) AS requests, SUM(input_tokens) AS input_tokens, "
                "SUM(output_tokens) AS output_tokens, SUM(cost_usd) AS cost_usd, SUM(cost) AS cost, "
                "SUM(list_cost) AS list_cost FROM ("
                + " UNION ALL ".join(sql for sql, _ in parts)
                + f") AS parts GROUP BY key, currency ORDER BY {order}",
                *(arg for _, args in parts for arg in args),
            )
        return [self._report_row(r) for r in rows]

    async def _day_ends_at(self, client_id: Clients, edge: Stretch) -> bool:
        """Whether no event (of the client) is recorded on the edge's day after
        its end, on a day the ledger still holds (some event is older: days
        before the first event held may have been trimmed, their totals kept)."""
        day_start, end = edge
        assert end is not None  # an edge at the end of a window has one
        where = "created_at >= ? AND created_at < ?"
        args: list[Any] = [self.dialect.time_in(end), self.dialect.time_in(day_start + timedelta(days=1))]
        where, args = _of_clients(client_id, where, args)
        async with self.connection() as conn:
            found = await conn.fetchone(f"SELECT 1 AS found FROM usage_events WHERE {where} LIMIT 1", *args)
            held = await conn.fetchone(
                "SELECT 1 AS found FROM usage_events WHERE created_at < ? LIMIT 1",
                self.dialect.time_in(day_start),
            )
        return found is None and held is not None

    async def events_only_report(
        self, client_id: str | None, start: datetime, end: datetime | None, group_by: str
    ) -> list[ReportRow]:
        """:meth:`usage_report` summed from the events alone (what the daily
        totals spare it; the benchmark compares them)."""
        sql, args = self._event_part(client_id, start, end, group_by)
        async with self.connection() as conn:
            return [self._report_row(r) for r in await conn.fetchall(sql + " ORDER BY key, currency", *args)]

    def _report_row(self, r: Row) -> ReportRow:
        d = self.dialect
        return ReportRow(
            key=str(r["key"]),
            requests=int(r["requests"]),
            input_tokens=int(r["input_tokens"]),
            output_tokens=int(r["output_tokens"]),
            cost_usd=d.money_out(r["cost_usd"]),
            cost=d.money_out(r["cost"]),
            list_cost=d.money_out(r["list_cost"]),
            currency=r["currency"],
        )

    def _daily_part(self, client_id: Clients, days: Days, group_by: str) -> tuple[str, list[Any]]:
        (table, _), key = _DAILY_GROUPS[group_by]
        where, args = "day >= ?", [days[0]]
        if days[1] is not None:
            where += " AND day < ?"
            args.append(days[1])
        where, args = _of_clients(client_id, where, args)
        sums = ", ".join(f"SUM({c}) AS {c}" for c in _DAILY_SUMS)
        return (
            f"SELECT {key} AS key, currency, {sums} FROM {table} WHERE {where} GROUP BY {key}, currency",
            args,
        )

    def _event_part(
        self, client_id: Clients, start: datetime, end: datetime | None, group_by: str
    ) -> tuple[str, list[Any]]:
        if group_by == "day":
            key = self.dialect.day_of
        elif group_by == "day_api_type":  # "2026-12-01/chat": a day's spend stacked by kind
            key = f"{self.dialect.day_of} || '/' || api_type"
        else:
            key = _GROUPS[group_by]
        where = "created_at >= ?"
        args: list[Any] = [self.dialect.time_in(start)]
        if end is not None:
            where += " AND created_at < ?"
            args.append(self.dialect.time_in(end))
        where, args = _of_clients(client_id, where, args)
        sql = (
            f"SELECT {key} AS key, currency, COUNT(*) AS requests, SUM(input_tokens) AS input_tokens, "
            "SUM(output_tokens) AS output_tokens, SUM(cost_usd) AS cost_usd, SUM(cost) AS cost, "
            # Events from before markups have no list cost: they were charged at list price.
            "SUM(COALESCE(list_cost, cost)) AS list_cost "
            f"FROM usage_events WHERE {where} GROUP BY {key}, currency"
        )
        return sql, args

    async def rebuild_daily_totals(self) -> None:
        """Sum the daily totals again from the events, with writers held off:
        for a ledger written by processes older than the totals (a rolling
        upgrade) or after an operator repaired events by hand. The totals of
        days before the first event held (trimmed by the retention setting)
        stay as they are."""
        summing = [
            s for s in dict(MIGRATIONS)[DAILY_TOTALS] if s.lstrip().startswith("INSERT INTO usage_daily")
        ]
        async with self.transaction() as conn:
            await conn.execute(render("{lock_events}", self.dialect.types))
            first = await conn.fetchone("SELECT MIN(created_at) AS first FROM usage_events")
            if first is None or first["first"] is None:
                return
            day = self.dialect.time_out(first["first"]).date().isoformat()
            for table in (_DAILY[0], _DAILY_USERS[0]):
                await conn.execute(f"DELETE FROM {table} WHERE day >= ?", day)
            for statement in summing:
                await conn.execute(render(statement, self.dialect.types))

    async def _roll_up(self, conn: Conn, events: list[UsageEvent]) -> None:
        """Add ``events`` (just recorded) to the daily totals, in their transaction."""
        for table, key_columns in (_DAILY, _DAILY_USERS):
            totals: dict[tuple[str, ...], list[Any]] = {}
            for e in events:
                day = e.created_at.astimezone(UTC).date().isoformat()
                key: tuple[str, ...] = (e.client_id, day, e.model, e.api_type, e.currency)
                if table == _DAILY_USERS[0]:
                    key = (e.client_id, day, e.end_user or "", e.currency)
                sums = totals.setdefault(key, [0, 0, 0, Decimal(0), Decimal(0), Decimal(0)])
                sums[0] += 1
                sums[1] += e.input_tokens
                sums[2] += e.output_tokens
                sums[3] += e.cost_usd
                sums[4] += e.cost
                sums[5] += e.list_cost
            await self._add_totals(conn, table, key_columns, totals)

    async def _add_totals(
        self, conn: Conn, table: str, key_columns: tuple[str, ...], totals: dict[tuple[str, ...], list[Any]]
    ) -> None:
        d = self.dialect
        # In key order: two batches lock the rows they share in the same order (no deadlock).
        rows = [(*key, *sums[:3], *(d.money_in(m) for m in sums[3:])) for key, sums in sorted(totals.items())]
        row = "(" + ", ".join(["?"] * (len(key_columns) + len(_DAILY_SUMS))) + ")"
        add = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in _DAILY_SUMS)
        for chunk in power_of_two_chunks(rows, _DAILY_ROWS_PER_INSERT):
            await conn.execute(
                f"INSERT INTO {table} ({', '.join((*key_columns, *_DAILY_SUMS))}) VALUES "
                + ", ".join([row] * len(chunk))
                + f" ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {add}",
                *(value for r in chunk for value in r),
            )

    async def limit_used(self, hold: Hold, client_id: str) -> int:
        async with self.connection() as conn:
            return await limit_used_in(conn, self.dialect, hold, client_id)

    async def ledger_totals(self, client_id: str, since: datetime) -> tuple[int, int]:
        """Tokens and cost (nanos) in the ledger since ``since``: what a
        budget's counters must equal, and a client without one has used."""
        async with self.connection() as conn:
            return await totals_since(conn, self.dialect, client_id, since)


def _of_clients(clients: Clients, where: str, args: list[Any]) -> tuple[str, list[Any]]:
    """``where`` narrowed to one client, to several, or left for every client."""
    if clients is None:
        return where, args
    if isinstance(clients, str):
        return f"{where} AND client_id = ?", [*args, clients]
    if not clients:
        return f"{where} AND 1 = 0", args
    return f"{where} AND client_id IN ({', '.join('?' * len(clients))})", [*args, *clients]


def day_split(start: datetime, end: datetime | None) -> tuple[Days | None, list[Stretch]]:
    """[start, end) as the whole UTC days inside it (first day, day after the
    last; None: no whole day) and the stretches at its edges that are not
    whole days (pure)."""
    first = utc_day_start(start)
    if first < start:
        first += timedelta(days=1)
    last = None if end is None else utc_day_start(end)
    if last is not None and last <= first:
        return None, [(start, end)]
    edges: list[Stretch] = []
    if start < first:
        edges.append((start, first))
    if last is not None and end is not None and last < end:
        edges.append((last, end))
    return (first.date().isoformat(), None if last is None else last.date().isoformat()), edges


def _first_of_each(events: list[UsageEvent]) -> list[UsageEvent]:
    """One event per request id, the first: the one a batch with a repeat inserted."""
    seen: set[str] = set()
    kept = []
    for event in events:
        if event.request_id not in seen:
            seen.add(event.request_id)
            kept.append(event)
    return kept


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
