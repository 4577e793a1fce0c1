"""The gate the store itself provides: admission under the budget's row lock.

Used when the configured gate cannot be reached (Redis down), so that spend
never goes through unchecked. It is slower (a transaction per admission) but
applies the same rule and holds the same reservations, in the database.
A reservation stays until the ledger records its call: that transaction
adds the usage and deletes the row, so the call is never counted as neither.
"""

from __future__ import annotations

from datetime import datetime

from taximeter.pricing.models import BudgetState, Hold, Reservation, UsageEvent
from taximeter.store.base import Admission, HeldReservations

__all__ = ["StoreGate"]


class StoreGate:
    """:class:`~taximeter.store.base.Gate` over the store's own tables."""

    def __init__(self, store: HeldReservations) -> None:
        self._store = store

    async def admit(self, reservation: Reservation, now: datetime) -> Admission:
        return await self._store.reserve(reservation, now)

    async def load(self, client_id: str, state: BudgetState | None, now: datetime) -> None:
        return None  # the store is its own copy

    async def settle(
        self,
        event: UsageEvent,
        cost_nanos: int,
        now: datetime,
        *,
        keep_until: datetime | None = None,
        budget: bool = True,
    ) -> dict[str, int]:
        return {}  # the ledger's record of the call swaps the row for its usage

    async def recorded(self, events: list[UsageEvent]) -> None:
        return None

    async def claim_unrecorded(self, now: datetime, limit: int) -> list[UsageEvent]:
        return []

    async def extend(self, reservations: list[Reservation]) -> None:
        await self._store.extend_reservations(reservations)

    async def release(self, client_id: str, request_id: str) -> None:
        await self._store.drop_reservation(request_id)

    async def restore(self, reservations: list[Reservation]) -> None:
        # Rows in the database are never lost; these are calls the other gate
        # admitted, held here so that admissions under the row lock count them.
        await self._store.hold_reservations(reservations)

    async def claim_expired(self, now: datetime, limit: int) -> list[Reservation]:
        return await self._store.claim_expired_reservations(now, limit)

    async def load_limits(self, counted: list[tuple[Hold, int]], now: datetime) -> None:
        return None  # limits are counted by the configured gate only (see the README)

    async def limit_counters(self, holds: list[Hold]) -> list[tuple[int, int] | None]:
        return [None for _ in holds]

    def forget_copies(self) -> None:
        return None  # its copies are shared: every process writes its changes to them

    def needs_refresh(self, client_id: str, now: datetime) -> bool:
        return False

    async def ping(self) -> None:
        await self._store.ping()

    async def close(self) -> None:
        return None
