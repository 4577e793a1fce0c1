"""The in-process gate: budget copies and reservations in this process's memory.

Only valid for a single process (start-up refuses ``workers > 1`` without
Redis). Each method runs without awaiting, so on one event loop it is atomic.
Copies older than ``max_age_s`` are reloaded in the background while they keep
answering, so a change made by another process (the CLI on the same database)
takes effect within about that time, and no call waits for the reload.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState, Reservation, UsageEvent
from taximeter.store.base import Admission

__all__ = ["LocalGate"]

_MISS = Admission("miss")


class LocalGate:
    """:class:`~taximeter.store.base.Gate` in this process's memory."""

    def __init__(self, *, max_age_s: float = 2.0) -> None:
        self._states: dict[str, BudgetState | None] = {}
        self._loaded_at: dict[str, datetime] = {}
        self._max_age = timedelta(seconds=max_age_s)
        self._held: dict[str, dict[str, Reservation]] = defaultdict(dict)  # client -> request -> reservation

    def _reserved(self, client_id: str) -> tuple[int, int]:
        held = self._held.get(client_id, {}).values()
        return sum(r.tokens for r in held), sum(r.cost_nanos for r in held)

    async def admit(self, reservation: Reservation, now: datetime) -> Admission:
        client_id = reservation.client_id
        if client_id not in self._states:
            return _MISS
        state = self._states[client_id]
        if state is not None:
            boundary = budgets.next_reset(state)
            if boundary is not None and now >= boundary:
                return _MISS
            outcome, reason = budgets.admission(state, *self._reserved(client_id))
            if outcome != "ok":
                return Admission(outcome, reason)
        self._held[client_id][reservation.request_id] = reservation
        return Admission("ok")

    async def load(self, client_id: str, state: BudgetState | None, now: datetime) -> None:
        self._states[client_id] = state
        self._loaded_at[client_id] = now

    async def settle(
        self, event: UsageEvent, cost_nanos: int, now: datetime, *, keep_until: datetime | None = None
    ) -> None:
        # keep_until is moot: this copy dies with the process that would record the event.
        await self.release(event.client_id, event.request_id)
        state = self._states.get(event.client_id)
        if state is None:
            return
        boundary = budgets.next_reset(state)
        if boundary is not None and now >= boundary:
            self._states.pop(event.client_id, None)  # rebuilt from the store on the next admission
            return
        self._states[event.client_id] = budgets.apply_usage(state, event.tokens, cost_nanos)

    async def release(self, client_id: str, request_id: str) -> None:
        held = self._held.get(client_id)
        if held is not None:
            held.pop(request_id, None)
            if not held:
                del self._held[client_id]

    async def recorded(self, events: list[UsageEvent]) -> None:
        return None

    async def claim_unrecorded(self, now: datetime, limit: int) -> list[UsageEvent]:
        return []

    async def extend(self, reservations: list[Reservation]) -> None:
        for reservation in reservations:
            held = self._held.get(reservation.client_id)
            if held is not None and reservation.request_id in held:
                held[reservation.request_id] = reservation

    async def restore(self, reservations: list[Reservation]) -> None:
        for reservation in reservations:  # a load keeps them here; nothing is ever lost
            self._held[reservation.client_id].setdefault(reservation.request_id, reservation)

    async def claim_expired(self, now: datetime, limit: int) -> list[Reservation]:
        expired = [r for held in self._held.values() for r in held.values() if r.expires_at <= now]
        expired = sorted(expired, key=lambda r: r.expires_at)[:limit]
        for reservation in expired:
            await self.release(reservation.client_id, reservation.request_id)
        return expired

    def needs_refresh(self, client_id: str, now: datetime) -> bool:
        loaded = self._loaded_at.get(client_id)
        return loaded is not None and now - loaded > self._max_age

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._states.clear()
        self._loaded_at.clear()
        self._held.clear()
