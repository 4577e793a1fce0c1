"""The ``ledger_retention_months`` setting: once a day, each process drops the
events older than that many whole UTC months before the current one (safe in
every process at once; the daily totals stay).

Nothing is dropped while a client counts from its first event: a lifetime
budget (period ``none``) or a limit with no window is counted again from the
ledger when its counters must be rebuilt (a new budget, a Redis that lost its
keys), and would then forget what was dropped. The operator is told why.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime

from taximeter.pricing.times import utc_month_start
from taximeter.proxy.clock import Clock
from taximeter.store.base import Store, StoreUnavailable

__all__ = ["trim", "trim_forever"]

log = logging.getLogger("taximeter.ledger")


async def trim(store: Store, months: int, clock: Clock) -> bool:
    """Drop the events before the first kept month; False when a client
    counting from its first event holds them back."""
    now = clock()
    forever = await counted_forever(store, now)
    if forever:
        log.warning(
            "ledger_not_trimmed",
            extra={"reason": "lifetime budgets or limits count every event", "clients": forever[:10]},
        )
        return False
    cutoff = utc_month_start(now, months)
    await store.drop_events_before(cutoff)
    log.info("ledger_trimmed", extra={"before": cutoff.isoformat()})
    return True


async def counted_forever(store: Store, now: datetime) -> list[str]:
    """Clients with a lifetime budget, or a limit counted from the ledger with no window."""
    ids = {s.client_id for s in await store.list_budgets(now) if s.config.period == "none"}
    for client in await store.list_clients():
        if any(limit.window == "none" and limit.metric != "concurrent" for limit in client.terms.limits):
            ids.add(client.id)
    return sorted(ids)


async def trim_forever(store: Store, months: int, clock: Clock, interval_s: float) -> None:
    done: date | None = None
    while True:
        today = clock().date()
        if today != done:
            try:
                await trim(store, months, clock)
                done = today
            except StoreUnavailable as exc:  # tried again at the next interval
                log.warning("ledger_trim_failed", extra={"error": str(exc)})
            except Exception:
                done = today  # tried again tomorrow, not every interval
                log.exception("ledger_trim_failed")
        await asyncio.sleep(interval_s)
