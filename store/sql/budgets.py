"""Budgets in SQL: settings, counters, pauses, and the rollover of a period
(:func:`taximeter.pricing.budgets.roll`) persisted when a read finds it due."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetConfig, BudgetState
from taximeter.store.base import NotFound
from taximeter.store.sql.budget_writes import BudgetWrites, totals_since
from taximeter.store.sql.rows import BUDGET_COLUMNS, budget_from_row, budget_row

__all__ = ["SqlBudgets"]

_BUDGET_ACTIONS = ("reset", "pause", "resume")


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
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        ``now`` (one read of all budgets, a write per budget rolled); how
        many were rolled."""
        async with self.connection() as conn:
            rows = await conn.fetchall(f"SELECT {BUDGET_COLUMNS} FROM budgets")
        due = [s for s in (budget_from_row(self.dialect, r) for r in rows) if budgets.roll(s, now) is not s]
        return sum([await self._roll_over(state.client_id, now) is not None for state in due])

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
