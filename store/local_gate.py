"""The in-process gate: budget copies in a dict, for the embedded default.

Only valid for a single process (start-up refuses ``workers > 1`` without
Redis). Copies older than ``max_age_s`` are reloaded, so a change made by
another process (the CLI on the same database) takes effect within that time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from taximeter.store import budgets
from taximeter.store.base import Admission
from taximeter.store.models import BudgetState

__all__ = ["LocalGate"]

_MISS = Admission("miss")
_OK = Admission("ok")


class LocalGate:
    """:class:`~taximeter.store.base.Gate` in this process's memory."""

    def __init__(self, *, max_age_s: float = 2.0) -> None:
        self._states: dict[str, BudgetState | None] = {}
        self._loaded_at: dict[str, datetime] = {}
        self._max_age = timedelta(seconds=max_age_s)

    async def admit(self, client_id: str, now: datetime) -> Admission:
        if client_id not in self._states or now - self._loaded_at[client_id] > self._max_age:
            return _MISS
        state = self._states[client_id]
        if state is None:
            return _OK
        boundary = budgets.next_reset(state)
        if boundary is not None and now >= boundary:
            return _MISS
        reason = budgets.refusal(state)
        return _OK if reason is None else Admission("refused", reason)

    async def load(self, client_id: str, state: BudgetState | None, now: datetime) -> None:
        self._states[client_id] = state
        self._loaded_at[client_id] = now

    async def settle(self, client_id: str, tokens: int, cost_nanos: int, now: datetime) -> None:
        state = self._states.get(client_id)
        if state is None:
            return
        boundary = budgets.next_reset(state)
        if boundary is not None and now >= boundary:
            await self.forget(client_id)
            return
        self._states[client_id] = budgets.apply_usage(state, tokens, cost_nanos)

    async def forget(self, client_id: str) -> None:
        self._states.pop(client_id, None)
        self._loaded_at.pop(client_id, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._states.clear()
        self._loaded_at.clear()
