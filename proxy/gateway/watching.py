"""What every watched object shares (a batch, a background response): held
for longer at each look while it runs, and once it has ended, charged, its
reservation let go and its watch ended, in that order, so a watcher that
dies at any step leaves the next one (in any process) all it needs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from taximeter.pricing import limits
from taximeter.pricing.charge import Tariff
from taximeter.pricing.models import Terms, Watch
from taximeter.proxy.errors import UpstreamUnavailable
from taximeter.proxy.gateway.files import upstream_json
from taximeter.proxy.gateway.upstreams import Upstream
from taximeter.proxy.services import Services

__all__ = [
    "WATCH_LEASE",
    "charge_estimate",
    "done_with",
    "finish_now",
    "hold_on",
    "look_upstream",
    "shown_upstream",
    "tariff_of",
    "terms_of",
]

log = logging.getLogger("taximeter.proxy")

# A watcher's hold on what it checks, longer than any one upstream call: another takes it after.
WATCH_LEASE = timedelta(minutes=15)
_NO_TERMS = Terms()


async def look_upstream(
    services: Services, watch: Watch, collection: str, shown: dict[str, Any] | None = None
) -> tuple[Upstream, dict[str, Any]] | None:
    """Its upstream, and the object as that shows it now (``shown``, when it
    was just seen): GET ``/v1/<collection>/<id>``. None when what it ran
    cannot be known - its upstream is no longer configured, or no longer
    knows it - and it was charged as reserved. Any other failure raises
    (it is looked at again later)."""
    upstream = services.router.named(watch.upstream)
    if upstream is None:
        await charge_estimate(services, watch, f"upstream {watch.upstream} is no longer configured")
        return None
    if shown is not None:
        return upstream, shown
    reply = await shown_upstream(services, upstream, collection, watch.object_id)
    if reply is None:
        await charge_estimate(services, watch, "the upstream no longer knows it")
        return None
    return upstream, reply


async def shown_upstream(
    services: Services, upstream: Upstream, collection: str, object_id: str
) -> dict[str, Any] | None:
    """The object as ``upstream`` shows it now (GET ``/v1/<collection>/<id>``);
    None when it no longer knows it. Any other failure raises."""
    path = f"/v1/{collection}/{object_id}"
    status, _, _, reply = await upstream_json(services, None, upstream, "GET", path)
    if status == 404:
        return None
    if status >= 300 or not isinstance(reply, dict) or reply.get("id") != object_id:
        raise UpstreamUnavailable(f"upstream {upstream.name} answered {status} for {path}")
    return reply


async def hold_on(services: Services, watch: Watch) -> None:
    """It still runs: its reservation is held in every gate for another ``watch_hold_s``."""
    meter = services.meter
    expires = meter.clock() + timedelta(seconds=services.settings.watch_hold_s)
    await meter.hold_again(replace(watch.reservation, expires_at=expires))


async def done_with(services: Services, watch: Watch) -> None:
    """It is charged: once the gate has counted what was charged, it is
    watched no more and its reservation is let go."""
    meter = services.meter
    await meter.ledger.flush()
    await meter.feedback.close()
    # Watched no more first: a process starting meanwhile holds no more what
    # is let go next (and a reservation left held is charged as a duplicate).
    await services.objects.end_watch(watch.object_id)
    await meter.release(watch.client_id, watch.reservation.request_id)


async def charge_estimate(services: Services, watch: Watch, why: str) -> None:
    """One whose outcome cannot be read (its upstream is gone, or no longer
    knows it): charged as reserved, flagged ``estimated``."""
    log.error(
        "watched_charged_as_reserved",
        extra={"object": watch.object_id, "client": watch.client_id, "why": why},
    )
    meter = services.meter
    now = meter.clock()
    event = replace(watch.reservation.event, status=502, created_at=now)
    terms = await terms_of(services, watch.client_id)
    holds = limits.late_holds(
        terms.limits,
        client_id=watch.client_id,
        model=event.model,
        timezone=terms.timezone or meter.timezone,
        now=now,
    )
    await meter.charge_late(event, holds)
    await done_with(services, watch)


async def terms_of(services: Services, client_id: str) -> Terms:
    """A client's terms now (none if it was deleted meanwhile)."""
    client = await services.meter.store.get_client(client_id)
    return _NO_TERMS if client is None else client.terms


def tariff_of(watch: Watch) -> Tariff:
    """What a USD costs its client: as when it was admitted (rate and markup)."""
    event = watch.reservation.event
    return Tariff(event.currency, event.exchange_rate, event.markup)


async def finish_now(
    services: Services, object_id: str, check: Callable[[Services, Watch], Awaitable[bool]]
) -> bool | None:
    """Look at a watched object now, out of turn (its owner is about to read
    or delete what it made): True when it has ended and is charged, False
    when it still runs, None when no watch of it was free to take (done
    with already, or another process is at it)."""
    claimed = await services.objects.claim_watches(
        services.meter.clock(), 1, WATCH_LEASE, object_id=object_id
    )
    for watch in claimed:
        try:
            if await check(services, watch):
                return True
        except BaseException:  # its watcher looks again at once, not after the lease
            await services.objects.check_again(watch.object_id, services.meter.clock(), watch.checks)
            raise
        await services.objects.check_again(watch.object_id, services.meter.clock(), watch.checks)
        return False
    return None
