"""The in-process gate: budget copies and reservations in this process's memory.

Only valid for a single process (start-up refuses ``workers > 1`` without
Redis). Each method runs without awaiting, so on one event loop it is atomic.
Copies older than ``max_age_s`` are reloaded in the background while they keep
answering, so a change made by another process (the CLI on the same database)
takes effect within about that time, and no call waits for the reload.

Limit counters (section 6b) are kept by key, each ``[used, reserved]``, and
dropped an hour after their window ends; a spend cap's counter this process
has not seen yet is a ``miss`` (counted from the ledger, then loaded).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from taximeter.pricing import budgets, limits
from taximeter.pricing.models import BudgetState, Hold, Reservation, UsageEvent
from taximeter.store.base import Admission

__all__ = ["LocalGate"]

_MISS = Admission("miss")
_LIMITS_MISSING = Admission("miss", "limits")
_COUNTER_GRACE = timedelta(hours=1)  # a window's counter outlives it by this: late settlements land in it


class LocalGate:
    """:class:`~taximeter.store.base.Gate` in this process's memory."""

    def __init__(self, *, max_age_s: float = 2.0) -> None:
        self._states: dict[str, BudgetState | None] = {}
        self._loaded_at: dict[str, datetime] = {}
        self._max_age = timedelta(seconds=max_age_s)
        self._held: dict[str, dict[str, Reservation]] = defaultdict(dict)  # client -> request -> reservation
        self._counters: dict[str, list[int]] = {}  # limit counter key -> [used, reserved]
        self._ends: dict[str, datetime | None] = {}  # limit counter key -> end of its window

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
        refused = self._limit_verdict(reservation.holds)
        if refused is not None:
            return refused
        for hold in reservation.holds:
            self._counter(hold)[1] += hold.amount
        self._held[client_id][reservation.request_id] = reservation
        return Admission("ok")

    def _limit_verdict(self, holds: tuple[Hold, ...]) -> Admission | None:
        for hold in holds:
            counter = self._counters.get(hold.key)
            if counter is None:
                if hold.limit.rebuilt_from_ledger:
                    return _LIMITS_MISSING
                continue  # a new window: nothing used yet
            verdict = limits.admission(counter[0], counter[1], hold.limit)
            if verdict is not None:
                return Admission(verdict, f"limit:{hold.limit.name}")
        return None

    def _counter(self, hold: Hold) -> list[int]:
        self._ends[hold.key] = hold.window_end
        return self._counters.setdefault(hold.key, [0, 0])

    async def load_limits(self, counted: list[tuple[Hold, int]], now: datetime) -> None:
        for hold, used in counted:  # a counter seen meanwhile already holds more than the ledger did
            if hold.key not in self._counters:
                self._counter(hold)[0] = used

    async def load(self, client_id: str, state: BudgetState | None, now: datetime) -> None:
        self._states[client_id] = state
        self._loaded_at[client_id] = now

    async def settle(
        self,
        event: UsageEvent,
        cost_nanos: int,
        now: datetime,
        *,
        keep_until: datetime | None = None,
        budget: bool = True,
    ) -> dict[str, int]:
        # keep_until is moot: this copy dies with the process that would record the event.
        held = self._take(event.client_id, event.request_id)
        counted = {}
        for hold in () if held is None else held.holds:
            counter = self._counters.get(hold.key)
            if counter is not None:
                counter[0] += hold.used_by(event.tokens, cost_nanos)
                counted[hold.key] = counter[0]
        state = self._states.get(event.client_id)
        if state is None or not budget:
            return counted
        boundary = budgets.next_reset(state)
        if boundary is not None and now >= boundary:
            self._states.pop(event.client_id, None)  # rebuilt from the store on the next admission
            return counted
        self._states[event.client_id] = budgets.apply_usage(state, event.tokens, cost_nanos)
        return counted

    async def release(self, client_id: str, request_id: str) -> None:
        self._take(client_id, request_id)

    def _take(self, client_id: str, request_id: str) -> Reservation | None:
        """Drop a held reservation and what it holds on its limits; it, or None."""
        held = self._held.get(client_id)
        if held is None:
            return None
        reservation = held.pop(request_id, None)
        if not held:
            del self._held[client_id]
        for hold in () if reservation is None else reservation.holds:
            counter = self._counters.get(hold.key)
            if counter is not None:
                counter[1] = max(counter[1] - hold.amount, 0)
        return reservation

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
            if reservation.request_id not in self._held[reservation.client_id]:
                self._held[reservation.client_id][reservation.request_id] = reservation
                for hold in reservation.holds:  # a counter not here is counted anew, from the ledger
                    counter = self._counters.get(hold.key)
                    if counter is not None:
                        counter[1] += hold.amount

    async def claim_expired(self, now: datetime, limit: int) -> list[Reservation]:
        expired = [r for held in self._held.values() for r in held.values() if r.expires_at <= now]
        expired = sorted(expired, key=lambda r: r.expires_at)[:limit]
        for reservation in expired:
            self._take(reservation.client_id, reservation.request_id)
            for hold in reservation.holds:  # charged at its estimate, on its limits too
                counter = self._counters.get(hold.key)
                if counter is not None:
                    counter[0] += hold.used_by(reservation.tokens, reservation.cost_nanos)
        self._drop_ended_counters(now)
        return expired

    def _drop_ended_counters(self, now: datetime) -> None:
        ended = [
            key
            for key, end in self._ends.items()
            if end is not None and end + _COUNTER_GRACE < now and self._counters[key][1] == 0
        ]
        for key in ended:
            del self._counters[key], self._ends[key]

    async def limit_counters(self, holds: list[Hold]) -> list[tuple[int, int] | None]:
        """``(used, reserved)`` of each hold's counter, None where this gate has none."""
        found = (self._counters.get(hold.key) for hold in holds)
        return [None if c is None else (c[0], c[1]) for c in found]

    def forget_copies(self) -> None:
        self._states.clear()  # calls held and limit counters stay: they are this process's own
        self._loaded_at.clear()

    def needs_refresh(self, client_id: str, now: datetime) -> bool:
        loaded = self._loaded_at.get(client_id)
        return loaded is not None and now - loaded > self._max_age

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._states.clear()
        self._loaded_at.clear()
        self._held.clear()
        self._counters.clear()
        self._ends.clear()
