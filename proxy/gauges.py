"""Budget gauges that follow every change (spec section 9): besides the
calls and changes this process sees itself, whenever another process
announces a change (the CLI, another worker, `apply`: heard by the next
call, or within ``sweep_interval_s``) or a period rolls over, every budget
is read again - in the background, once however often it
is asked for meanwhile - and a budget deleted elsewhere drops its series."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from taximeter.proxy.clock import Clock
from taximeter.proxy.metrics import Metrics
from taximeter.store.base import Budgets, StoreUnavailable
from taximeter.store.changes import Changes

__all__ = ["BudgetGauges"]

log = logging.getLogger("taximeter.metrics")


class BudgetGauges:
    def __init__(self, store: Budgets, metrics: Metrics, clock: Clock) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._reading: asyncio.Task[None] | None = None
        self._again = False

    def follow(self) -> None:
        """Read every budget again, soon."""
        if self._reading is not None and not self._reading.done():
            self._again = True  # a read under way may have started before the change
            return
        self._reading = asyncio.get_running_loop().create_task(self._read(), name="taximeter-gauges")

    async def _read(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                states = await self._store.list_budgets(self._clock())
            except StoreUnavailable as exc:  # the next change, or rollover, reads them again
                log.warning("gauges_not_read", extra={"error": str(exc)})
                return
            for state in states:
                self._metrics.budget(state)
            for client_id in self._metrics.budgets_shown() - {state.client_id for state in states}:
                self._metrics.drop_budget(client_id)

    async def follow_changes(self, changes: Changes, interval_s: float) -> None:
        """Read them again after a change announced elsewhere, even while no
        call comes to hear of it (checked every ``interval_s``)."""
        seen = changes.stamp()
        while True:
            await asyncio.sleep(interval_s)
            stamp = changes.stamp()
            if stamp != seen:
                seen = stamp
                self.follow()

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
