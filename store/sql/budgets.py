"""Budgets in SQL: settings, counters, pauses, and the rollover of a period
(:func:`taximeter.pricing.budgets.roll`) persisted when a read finds it due."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetConfig, BudgetState
from taximeter.store.base import NotFound
from taximeter.store.sql.budget_writes import BudgetWrites, totals_since
from taximeter.store.sql.rows import BUDGET_COLUMNS, NEVER, budget_from_row, budget_row

__all__ = ["SqlBudgets"]

_BUDGET_ACTIONS = ("reset", "pause", "resume")

# How close each client is to a limit, as :func:`budgets.urgency` reckons it
# of the budget rolled over to now (a period that has ended counts from zero,
# its limit pause lifted), in one pass over every client (portable SQL: the
# overview of 10,000 clients converts no budget in Python).
_STANDINGS = """
SELECT id, name, budgeted, CASE WHEN held = 1 AND pct < 100 THEN 100.0 ELSE pct END AS urgency FROM (
  SELECT id, name, budgeted, held, CASE WHEN tokens_pct > cost_pct THEN tokens_pct ELSE cost_pct END AS pct
  FROM (
    SELECT id, name, budgeted,
      CASE WHEN rolled = 0 AND mode IN ('tokens', 'both') AND token_limit > 0
        THEN tokens_used * 100.0 / token_limit ELSE 0.0 END AS tokens_pct,
      CASE WHEN rolled = 0 AND mode IN ('cost', 'both') AND cost_limit + credit > 0
        THEN cost_used * 100.0 / (cost_limit + credit) ELSE 0.0 END AS cost_pct,
      CASE WHEN paused AND (rolled = 0 OR pause_reason = 'manual') THEN 1 ELSE 0 END AS held
    FROM (
      SELECT c.id AS id, c.name AS name, b.client_id IS NOT NULL AS budgeted, b.mode, b.token_limit,
        b.tokens_used, b.cost_limit, b.cost_used, b.credit, b.paused, b.pause_reason,
        CASE WHEN b.next_reset IS NOT NULL AND b.next_reset <= ? THEN 1 ELSE 0 END AS rolled
      FROM clients c LEFT JOIN budgets b ON b.client_id = c.id
    ) AS joined
  ) AS percents
) AS levels ORDER BY id
"""


class SqlBudgets(BudgetWrites):
    """:class:`~taximeter.store.base.Budgets` in SQL."""

    async def put_budget(self, config: BudgetConfig, now: datetime) -> BudgetState:
        async with self.transaction() as conn:
            if await conn.fetchone("SELECT id FROM clients WHERE id = ?", config.client_id) is None:
                raise NotFound(f"no client {config.client_id!r}")
            old = await self._locked_budget(conn, config.client_id)
            state = budgets.configure(old, config, now)
            if old is None:
                await conn.execute(
                    f"INSERT INTO budgets ({BUDGET_COLUMNS}, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    *budget_row(self.dialect, state),
                    self.dialect.time_in(now),
                )
            before = old or state
            if old is None or state.period_start != old.period_start:
                # A new budget, or a new period: it counts what the ledger
                # already holds since its start, so counters and ledger agree
                # (and a client already past the new limit is paused now).
                tokens, cost_nanos = await totals_since(
                    conn, self.dialect, config.client_id, state.period_start
                )
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
            row = await conn.fetchone(f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE client_id = ?", client_id)
        if row is None:
            return None
        state = budget_from_row(self.dialect, row)
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

    async def roll_due(self, now: datetime) -> int:
        """Persist the rollover of every budget whose period has ended by
        ``now``; how many were rolled. Only the budgets due are read (by the
        index on ``next_reset``), so a tick costs what is due, not what exists.
        A row whose ``next_reset`` was only a lower bound (the migration's), or
        none (written by an older release), is given its real one."""
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE next_reset <= ? OR next_reset IS NULL",
                self.dialect.time_in(now),
            )
        rolled = 0
        for row in rows:
            state = budget_from_row(self.dialect, row)
            if budgets.roll(state, now) is not state:
                rolled += await self._roll_over(state.client_id, now) is not None
                continue
            end = budgets.next_reset(state)
            async with self.transaction() as conn:  # unless it was written meanwhile
                await conn.execute(
                    "UPDATE budgets SET next_reset = ? "
                    "WHERE client_id = ? AND version = ? AND (next_reset <= ? OR next_reset IS NULL)",
                    self.dialect.time_in(NEVER if end is None else end),
                    state.client_id,
                    state.version,
                    self.dialect.time_in(now),
                )
        return rolled

    async def list_budgets(self, now: datetime) -> list[BudgetState]:
        """Every budget, each read as :meth:`get_budget` does: a budget whose
        period has ended is rolled over and written on the way."""
        async with self.connection() as conn:  # one read of them all; a write only for one rolled
            rows = await conn.fetchall(f"SELECT {BUDGET_COLUMNS} FROM budgets ORDER BY client_id")
        states: list[BudgetState | None] = []
        for row in rows:
            state = budget_from_row(self.dialect, row)
            rolled = budgets.roll(state, now) is not state
            states.append(await self._roll_over(state.client_id, now) if rolled else state)
        return [s for s in states if s is not None]

    async def client_standings(self, now: datetime) -> list[tuple[str, str, float | None]]:
        """Every client's id, name and how close its budget is to a limit (None:
        no budget), by id: one read of them all, summed up in SQL."""
        async with self.connection() as conn:
            rows = await conn.fetchall(_STANDINGS, self.dialect.time_in(now))
        return [(r["id"], r["name"], float(r["urgency"]) if r["budgeted"] else None) for r in rows]

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
