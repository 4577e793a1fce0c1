"""The sweeper: the background step every process runs, each
``sweep_interval_s``. It keeps this process's live calls' reservations from
expiring, charges the reservations of calls whose process died (at their
estimate, flagged), records events a dead process had counted but not made
durable, and rolls budgets whose period has ended. Safe in every process at
once: each reservation and event is claimed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from taximeter.proxy.errors import MeteringUnavailable
from taximeter.proxy.gateway.metering import Meter
from taximeter.store.base import Gate, StoreUnavailable

__all__ = ["sweep", "sweep_forever"]

log = logging.getLogger("taximeter.metering")

_CLAIM_BATCH = 100


async def sweep(meter: Meter, on_rolled: Callable[[], object] = lambda: None) -> int:
    """One sweep; the number of expired reservations it charged. ``on_rolled``
    is told when a budget's period rolled over."""
    now = meter.clock()
    await meter.follow_prices(now.date())  # a new day: the prices in force from it
    with contextlib.suppress(StoreUnavailable):  # rates set by other processes apply from here on
        await meter.rates.refresh()
    await _keep_alive(meter, now)
    charged = 0
    for gate in (meter.gate, meter.fallback):
        charged += await _charge_expired(meter, gate, now)
    await _record_unrecorded(meter, now)
    # Roll every budget whose boundary passed, once this process's calls of
    # the ending period are durable (their thresholds fire in that period).
    await meter.ledger.flush()
    if await meter.store.roll_due(now):
        on_rolled()
    return charged


async def sweep_forever(
    meter: Meter, interval_s: float, on_rolled: Callable[[], object] = lambda: None
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await sweep(meter, on_rolled)
        except (StoreUnavailable, MeteringUnavailable) as exc:
            log.warning("sweep_failed", extra={"error": str(exc)})
        except Exception:
            log.exception("sweep_failed")


async def _charge_expired(meter: Meter, gate: Gate, now: datetime) -> int:
    charged = 0
    while True:
        try:
            expired = await gate.claim_expired(now, _CLAIM_BATCH)
        except StoreUnavailable as exc:
            log.warning("sweep_skipped", extra={"error": str(exc)})
            return charged
        for reservation in expired:
            log.warning(
                "reservation_expired",
                extra={"request_id": reservation.request_id, "client": reservation.client_id},
            )
            # Counted by the gate only once the store has recorded it: the
            # same call may be held by both gates, or recorded already.
            meter.feedback.swept(reservation.request_id, await meter.ledger.submit(reservation.event))
        charged += len(expired)
        if len(expired) < _CLAIM_BATCH:
            return charged


async def _keep_alive(meter: Meter, now: datetime) -> None:
    """Push out the expiry of this process's live calls' reservations before
    it comes (a slow reader may outlive the first one)."""
    renewed = [
        replace(r, expires_at=now + meter.reservation_ttl)
        for r in meter.held.expiring(now + meter.reservation_ttl / 2)
    ]
    if not renewed:
        return
    for gate in (meter.gate, meter.fallback):
        with contextlib.suppress(StoreUnavailable):
            await gate.extend(renewed)
    meter.held.renew(renewed)


async def _record_unrecorded(meter: Meter, now: datetime) -> None:
    try:
        events = await meter.gate.claim_unrecorded(now, _CLAIM_BATCH)
    except StoreUnavailable as exc:
        log.warning("sweep_skipped", extra={"error": str(exc)})
        return
    for event in events:  # counted by the gate already; the store may have it too
        log.warning("event_unrecorded", extra={"request_id": event.request_id, "client": event.client_id})
        await meter.ledger.submit(event)
