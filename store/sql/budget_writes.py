"""The step every budget-changing transaction shares: lock the budget's row,
write it back, and put the budget events the change raises in the outbox (the
webhook body is :func:`taximeter.pricing.budgets.alert_payload`'s, stored as is)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetAlert, BudgetState
from taximeter.pricing.money import to_nanos
from taximeter.store.sql.core import Conn, Dialect, SqlBase
from taximeter.store.sql.rows import BUDGET_COLUMNS, budget_from_row, budget_row

__all__ = ["BudgetWrites", "totals_since"]

log = logging.getLogger("taximeter.budgets")


class BudgetWrites(SqlBase):
    """Locked reads and writes of budget rows, with their outbox events."""

    # Told of every budget event as it is written (metrics); inside the
    # transaction, so a rare rolled-back one is still counted.
    _observers: tuple[Callable[[BudgetAlert], None], ...] = ()
    _last_event_micros = 0  # keeps event ids increasing within this process

    def observe(self, callback: Callable[[BudgetAlert], None]) -> None:
        self._observers = (*self._observers, callback)

    async def _locked_budget(self, conn: Conn, client_id: str) -> BudgetState | None:
        row = await conn.fetchone(
            f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE client_id = ?{self.dialect.for_update}",
            client_id,
        )
        return None if row is None else budget_from_row(self.dialect, row)

    async def _write_budget(
        self, conn: Conn, old: BudgetState, new: BudgetState, now: datetime
    ) -> BudgetState:
        """Write ``new`` over ``old``, with the budget events the change raises
        put in the outbox in the same transaction."""
        state, events = budgets.transition(old, new)
        values = budget_row(self.dialect, state)
        await conn.execute(
            "UPDATE budgets SET mode = ?, token_limit = ?, cost_limit = ?, period = ?, timezone = ?, "
            "currency = ?, pause_at_limit = ?, alert_thresholds = ?, period_start = ?, tokens_used = ?, "
            "cost_used = ?, paused = ?, pause_reason = ?, version = ?, alerts_fired = ?, credit = ?, "
            "next_reset = ?, updated_at = ? "
            "WHERE client_id = ?",
            *values[1:],
            self.dialect.time_in(now),
            values[0],
        )
        for event in events:
            await self._enqueue(conn, event, state, now)
        return state

    async def _enqueue(self, conn: Conn, event: BudgetAlert, state: BudgetState, now: datetime) -> None:
        """Put ``event`` in the outbox with its webhook body, built by
        :func:`~taximeter.pricing.budgets.alert_payload` and stored as is."""
        event_id = self._event_id(now)
        await conn.execute(
            "INSERT INTO alert_outbox (id, client_id, kind, payload, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            event_id,
            event.client_id,
            event.kind,
            json.dumps(budgets.alert_payload(event, state, event_id, now)),
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


async def totals_since(conn: Conn, d: Dialect, client_id: str, since: datetime) -> tuple[int, int]:
    """Tokens and cost (nanos) of a client's events at or after ``since``:
    what its budget counts when its period starts then."""
    row = await conn.fetchone(
        "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) AS tokens, "
        "SUM(cost) AS cost FROM usage_events WHERE client_id = ? AND created_at >= ?",
        client_id,
        d.time_in(since),
    )
    assert row is not None  # an aggregate always returns a row
    return int(row["tokens"]), to_nanos(d.money_out(row["cost"]))
