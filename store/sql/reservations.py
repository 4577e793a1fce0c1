"""Reservations held by the store itself (the store-held gate's tables),
admitted under the budget's row lock."""

from __future__ import annotations

import json
from datetime import datetime

from taximeter.pricing import budgets, limits
from taximeter.pricing.models import Reservation, UsageEvent
from taximeter.pricing.money import from_nanos, to_nanos
from taximeter.store.base import Admission
from taximeter.store.sql.budget_writes import BudgetWrites
from taximeter.store.sql.core import Conn
from taximeter.store.sql.ledger import limit_used_in

__all__ = ["SqlReservations"]


class SqlReservations(BudgetWrites):
    """:class:`~taximeter.store.base.HeldReservations` in SQL."""

    async def reserve(self, reservation: Reservation, now: datetime) -> Admission:
        """Check the budget and every limit the call holds, and hold
        ``reservation``, under the client's row lock: the same rules as the
        gates, for when they cannot be reached. A limit's use is the
        ledger's in its window plus what the reservations held here hold."""
        async with self.transaction() as conn:
            if reservation.holds:
                await conn.fetchone(
                    "SELECT id FROM clients WHERE id = ?" + self.dialect.for_update, reservation.client_id
                )
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
            refused = await self._limit_verdict(conn, reservation)
            if refused is not None:
                return refused
            await self._insert_reservation(conn, reservation)
        return Admission("ok")

    async def _limit_verdict(self, conn: Conn, reservation: Reservation) -> Admission | None:
        if not reservation.holds:
            return None
        rows = await conn.fetchall(
            "SELECT holds FROM reservations WHERE client_id = ? AND holds IS NOT NULL", reservation.client_id
        )
        reserved: dict[str, int] = {}
        for row in rows:
            for key, amount in json.loads(row["holds"]):
                reserved[key] = reserved.get(key, 0) + int(amount)
        for hold in reservation.holds:
            limit = hold.limit
            in_flight_only = limit.metric == "concurrent"
            used = (
                0 if in_flight_only else await limit_used_in(conn, self.dialect, hold, reservation.client_id)
            )
            verdict = limits.admission(used, reserved.get(hold.key, 0), limit)
            if verdict is not None:
                return Admission(verdict, f"limit:{limit.name}")
        return None

    async def hold_reservations(self, reservations: list[Reservation]) -> None:
        """Hold reservations admitted elsewhere (by a gate that went away), with
        no check, so the next admission here counts them; one already held
        stays as it is."""
        async with self.transaction() as conn:
            for reservation in reservations:
                await self._insert_reservation(conn, reservation)

    async def _insert_reservation(self, conn: Conn, reservation: Reservation) -> None:
        await conn.execute(
            "INSERT INTO reservations (request_id, client_id, tokens, cost, expires_at, event, holds) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
            reservation.request_id,
            reservation.client_id,
            reservation.tokens,
            self.dialect.money_in(from_nanos(reservation.cost_nanos)),
            self.dialect.time_in(reservation.expires_at),
            reservation.event.to_json(),
            json.dumps([[h.key, h.amount] for h in reservation.holds]) if reservation.holds else None,
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
