"""The watcher: the step every process runs beside the sweeper, each
``sweep_interval_s``, for objects that keep running upstream after the call
that made them (batches, background responses). Each due one is taken by
one process at a time (a lease in the store) and looked at upstream: one
still running is looked at again later, each time twice as late up to
``watch_check_max_s``; one that has ended is charged and watched no more. A
look that fails (the upstream or the store down) is tried again the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from taximeter.pricing.models import Watch
from taximeter.proxy.errors import MeteringUnavailable, TaximeterError
from taximeter.proxy.gateway.background import check_response
from taximeter.proxy.gateway.batches import check_batch
from taximeter.proxy.gateway.vector_stores import KIND, check_storage
from taximeter.proxy.gateway.watching import WATCH_LEASE, hold_on
from taximeter.proxy.services import Services
from taximeter.store.base import StoreUnavailable

__all__ = ["hold_all", "watch_due", "watch_forever"]

log = logging.getLogger("taximeter.metering")

_CLAIM = 20  # watches one look takes at a time


async def watch_due(services: Services) -> int:
    """Look at every watch that is due; the number done with (ended and charged)."""
    done = 0
    while True:
        due = await services.objects.claim_watches(services.meter.clock(), _CLAIM, WATCH_LEASE)
        for watch in due:
            done += await _look(services, watch)
        if len(due) < _CLAIM:
            return done


async def _look(services: Services, watch: Watch) -> int:
    try:
        if watch.kind == KIND:
            await check_storage(services, watch)  # charged, and looked at again after midnight
            return 0
        check = check_batch if watch.kind == "batch" else check_response
        if await check(services, watch):
            return 1
    except (TaximeterError, StoreUnavailable) as exc:
        log.warning(
            "watch_failed", extra={"object": watch.object_id, "client": watch.client_id, "error": str(exc)}
        )
        await _hold_on_quietly(services, watch)
    except Exception:  # a bug, or a reply no one foresaw: the others are still looked at
        log.exception("watch_failed", extra={"object": watch.object_id, "client": watch.client_id})
        await _hold_on_quietly(services, watch)
    settings = services.settings
    if watch.kind == KIND:  # a look that failed: tried again soon (its checks: the last day charged)
        checks, wait = watch.checks, settings.watch_check_max_s
    else:  # still running, or a look that failed: each time twice as late
        checks = watch.checks + 1
        wait = min(settings.watch_check_s * 2 ** min(checks, 30), settings.watch_check_max_s)
    try:
        await services.objects.check_again(
            watch.object_id, services.meter.clock() + timedelta(seconds=wait), checks
        )
    except StoreUnavailable as exc:  # its lease runs out: looked at again then
        log.warning("watch_failed", extra={"object": watch.object_id, "error": str(exc)})
    return 0


def _holds(watch: Watch) -> bool:
    """Whether a watch holds a reservation (a vector store's storage holds nothing)."""
    return watch.kind != KIND


async def _hold_on_quietly(services: Services, watch: Watch) -> None:
    """A look that failed still holds its reservation on for longer."""
    if _holds(watch):
        with contextlib.suppress(Exception):
            await hold_on(services, watch)


async def hold_all(services: Services) -> None:
    """Hold every watched object's reservation again: at start, a gate that
    lives in this process (or a Redis that was emptied) holds none of them."""
    held = [watch for watch in await services.objects.all_watches() if _holds(watch)]
    for watch in held:
        await hold_on(services, watch)
    # One ended meanwhile (by another process) would stay held: let it go.
    left = {watch.object_id for watch in await services.objects.all_watches()}
    for watch in held:
        if watch.object_id not in left:
            await services.meter.release(watch.client_id, watch.reservation.request_id)


async def watch_forever(services: Services, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await watch_due(services)
        except (StoreUnavailable, MeteringUnavailable) as exc:
            log.warning("watch_failed", extra={"error": str(exc)})
        except Exception:
            log.exception("watch_failed")
