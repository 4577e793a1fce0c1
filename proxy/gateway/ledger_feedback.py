"""What the ledger tells the gate: which settled events are durable now.

A shared gate keeps each settled event until then (a process killed in
between loses nothing); it is told in batches, one trip for a whole ledger
batch. An event the sweeper charged is counted by the gate only once the
store has recorded it: the same call may be held by both gates, or be a
replay the store already had.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from taximeter.pricing.models import Hold, UsageEvent
from taximeter.store.base import Gate, StoreUnavailable

__all__ = ["LedgerFeedback"]

log = logging.getLogger("taximeter.metering")

# Add an event (ledger sequence) to the gate's copy, and to the limit counters of its holds.
Count = Callable[[UsageEvent, int, tuple[Hold, ...]], Awaitable[object]]


class LedgerFeedback:
    def __init__(self, gate: Gate, count: Count) -> None:
        self._gate = gate
        self._count = count
        # Charged by the sweeper or a watcher: request id → ledger sequence, and
        # the limit counters it counts on (none: those its reservation held).
        self._swept: dict[str, tuple[int, tuple[Hold, ...]]] = {}
        self._recorded: list[UsageEvent] = []  # durable, not yet told to the gate
        self._recorded_swept: list[tuple[int, UsageEvent, tuple[Hold, ...]]] = []
        self._telling: asyncio.Task[None] | None = None

    def swept(self, request_id: str, sequence: int, holds: tuple[Hold, ...] = ()) -> None:
        """The sweeper (or a watcher) charged ``request_id`` as ledger
        ``sequence``, to be counted on ``holds`` too."""
        self._swept[request_id] = (sequence, holds)

    def recorded(self, event: UsageEvent, recorded: bool) -> None:
        """The ledger made ``event`` durable (``recorded`` False: it already was)."""
        self._recorded.append(event)
        swept = self._swept.pop(event.request_id, None)
        if swept is not None and recorded:
            self._recorded_swept.append((swept[0], event, swept[1]))
        if self._telling is None:
            self._telling = asyncio.create_task(self._tell_gate(), name="taximeter-recorded")

    async def close(self) -> None:
        """Wait until the gate has been told of every event recorded so far."""
        if self._telling is not None:
            await asyncio.shield(self._telling)

    async def _tell_gate(self) -> None:
        try:
            while self._recorded or self._recorded_swept:
                events, self._recorded = self._recorded, []
                swept, self._recorded_swept = self._recorded_swept, []
                for sequence, event, holds in swept:  # charged by the sweeper, now in the store
                    await self._count(event, sequence, holds)
                try:
                    await self._gate.recorded(events)
                except StoreUnavailable as exc:  # kept there; a sweep records them again, harmlessly
                    log.warning("gate_recorded_failed", extra={"events": len(events), "error": str(exc)})
        finally:
            self._telling = None
