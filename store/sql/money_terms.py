"""Exchange rates (with their history) and credits, in SQL (spec section 6c)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState, Credit, ExchangeRate
from taximeter.store.base import NotFound
from taximeter.store.sql.budget_writes import BudgetWrites
from taximeter.store.sql.core import Row

__all__ = ["SqlMoneyTerms"]

_CREDIT_COLUMNS = "id, client_id, amount, note, created_at, period_start"


class SqlMoneyTerms(BudgetWrites):
    """:class:`~taximeter.store.base.ExchangeRates` and the credits of
    :class:`~taximeter.store.base.Budgets` in SQL."""

    async def set_rate(self, currency: str, rate: Decimal, now: datetime) -> ExchangeRate:
        async with self.transaction() as conn:
            await conn.execute(
                "INSERT INTO exchange_rates (currency, since, rate) VALUES (?, ?, ?) "
                "ON CONFLICT (currency, since) DO UPDATE SET rate = excluded.rate",
                currency,
                self.dialect.time_in(now),
                self.dialect.money_in(rate),
            )
        return ExchangeRate(currency, rate, now)

    async def rate_history(self, currency: str | None = None) -> list[ExchangeRate]:
        where, args = ("WHERE currency = ?", [currency]) if currency else ("", [])
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT currency, since, rate FROM exchange_rates {where} ORDER BY currency, since DESC",
                *args,
            )
        return [self._rate(r) for r in rows]

    async def current_rates(self) -> dict[str, ExchangeRate]:
        async with self.connection() as conn:
            rows = await conn.fetchall(
                "SELECT r.currency, r.since, r.rate FROM exchange_rates r JOIN "
                "(SELECT currency, MAX(since) AS since FROM exchange_rates GROUP BY currency) newest "
                "ON newest.currency = r.currency AND newest.since = r.since"
            )
        return {r["currency"]: self._rate(r) for r in rows}

    def _rate(self, row: Row) -> ExchangeRate:
        return ExchangeRate(
            row["currency"], self.dialect.money_out(row["rate"]), self.dialect.time_out(row["since"])
        )

    async def add_credit(
        self, client_id: str, amount: Decimal, note: str, now: datetime
    ) -> tuple[Credit, BudgetState]:
        """Raise this period's cost limit of ``client_id``'s budget by
        ``amount`` and lift a limit pause; NotFound without a budget."""
        async with self.transaction() as conn:
            # The client's row first, as the store-held gate locks them: the
            # credit's foreign key needs it, and the other order could deadlock.
            await conn.fetchone("SELECT id FROM clients WHERE id = ?" + self.dialect.for_update, client_id)
            old = await self._locked_budget(conn, client_id)
            if old is None:
                raise NotFound(f"client {client_id!r} has no budget")
            rolled = budgets.roll(old, now)
            state = await self._write_budget(conn, old, budgets.give_credit(rolled, amount), now)
            credit = Credit(f"cr_{uuid.uuid4().hex[:20]}", client_id, amount, note, now, state.period_start)
            await conn.execute(
                f"INSERT INTO credits ({_CREDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                credit.id,
                client_id,
                self.dialect.money_in(amount),
                note,
                self.dialect.time_in(now),
                self.dialect.time_in(state.period_start),
            )
        return credit, state

    async def list_credits(self, client_id: str) -> list[Credit]:
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {_CREDIT_COLUMNS} FROM credits WHERE client_id = ? ORDER BY created_at DESC, id",
                client_id,
            )
        return [
            Credit(
                id=r["id"],
                client_id=r["client_id"],
                amount=self.dialect.money_out(r["amount"]),
                note=r["note"],
                created_at=self.dialect.time_out(r["created_at"]),
                period_start=self.dialect.time_out(r["period_start"]),
            )
            for r in rows
        ]
