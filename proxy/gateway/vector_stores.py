"""Vector stores (spec sections 4b and 5): each is its maker's, with every
file it holds and every search of it; the files a body names must be the
caller's own. Searching a store is free; keeping one costs storage, charged
by :mod:`taximeter.pricing.storage`: a watch per store looks at it upstream
after each UTC midnight and charges the days since it last did, at the size
it has then, up to the day it expired; deleting it through taximeter charges
its last day first."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from aiohttp import web

from taximeter.pricing import limits
from taximeter.pricing.catalog import DEFAULT_PROVIDER
from taximeter.pricing.charge import CallFacts, charge
from taximeter.pricing.models import OwnedObject, Reservation, UsageEvent, Watch
from taximeter.pricing.storage import (
    STORAGE_MODEL,
    days_to_charge,
    expired_on,
    next_midnight,
    storage_request_id,
    storage_usage,
)
from taximeter.pricing.usage import Usage
from taximeter.proxy.errors import MeteringUnavailable, UpstreamUnavailable
from taximeter.proxy.gateway import auth
from taximeter.proxy.gateway.files import list_owned, upstream_json
from taximeter.proxy.gateway.objects import valid_id
from taximeter.proxy.gateway.ownership import checked_body
from taximeter.proxy.gateway.upstreams import Upstream
from taximeter.proxy.gateway.watching import WATCH_LEASE, shown_upstream, terms_of
from taximeter.proxy.middleware import REQUEST_ID
from taximeter.proxy.services import Services

__all__ = [
    "STORE_REFERENCES",
    "check_storage",
    "create_vector_store",
    "delete_vector_store",
    "list_vector_stores",
    "show_vector_store",
]

log = logging.getLogger("taximeter.metering")

KIND = "vector_store"
STORE_REFERENCES = 2_000  # files one store's body may name (a file batch names many)
_COLLECTION = "vector_stores"
_ENDPOINT = f"/v1/{_COLLECTION}"


async def create_vector_store(request: web.Request, services: Services) -> web.StreamResponse:
    """``POST /v1/vector_stores``: refused like any call to a client that may
    not spend (or when its storage has no price and the policy rejects the
    unpriced); made, the store is the caller's and its storage is watched.
    Run to its end even if the client leaves, so no store is left unmetered."""
    key = await auth.authenticate(request, services.keys)
    await services.meter.precheck(key.client_id, request[REQUEST_ID])
    upstream = services.router.pick(None)
    services.meter.resolve_price(STORAGE_MODEL, True, upstream.provider)
    body = await checked_body(request, services, key.client_id, most=STORE_REFERENCES)
    return await services.shielded(_create(request, services, key.client_id, upstream, body))


async def _create(
    request: web.Request, services: Services, client_id: str, upstream: Upstream, body: bytes
) -> web.StreamResponse:
    status, data, relayed, reply = await upstream_json(services, request, upstream, "POST", _ENDPOINT, body)
    if status < 300 and isinstance(reply, dict) and valid_id(reply.get("id")):
        await _keep(services, request[REQUEST_ID], client_id, upstream, reply)
    return web.Response(body=data, status=status, headers=relayed)


async def _keep(
    services: Services, request_id: str, client_id: str, upstream: Upstream, made: dict[str, object]
) -> None:
    """Record the new store's owner and watch its storage; a store that
    cannot be both is deleted upstream again (best effort) and the call
    fails: none is kept that no one pays for, or that its owner cannot reach."""
    store_id, now = str(made["id"]), services.meter.clock()
    try:
        await services.objects.own_objects(
            [OwnedObject(store_id, KIND, client_id, upstream.name, now, {"object": made})]
        )
        await services.objects.watch(_watch(store_id, client_id, upstream, now), next_midnight(now))
    except Exception as exc:
        fields = {"request_id": request_id, "object": store_id, "client": client_id, "error": str(exc)}
        try:
            status, *_ = await upstream_json(services, None, upstream, "DELETE", f"{_ENDPOINT}/{store_id}")
        except Exception as undo:
            status, fields["undo_error"] = 0, str(undo)
        # Undone: nothing to charge. Else it is kept upstream, unmetered: the operator must know.
        log.error("vector_store_undone" if status < 300 and status else "vector_store_orphaned", extra=fields)
        with contextlib.suppress(Exception):
            await services.objects.forget_object(store_id)
        raise MeteringUnavailable("the store could not record the new vector store; it was not kept") from exc


async def list_vector_stores(request: web.Request, services: Services) -> web.StreamResponse:
    """``GET /v1/vector_stores``: the caller's, each as last seen (made,
    retrieved, or looked at for its storage)."""
    return await list_owned(request, services, KIND, lambda shown: True)


async def show_vector_store(
    request: web.Request, services: Services, store: OwnedObject, upstream: Upstream
) -> web.StreamResponse:
    """``GET /v1/vector_stores/{id}``: as the upstream shows it, kept as last seen."""
    path = f"{_ENDPOINT}/{store.object_id}"
    status, data, relayed, reply = await upstream_json(services, request, upstream, "GET", path)
    if status < 300 and isinstance(reply, dict) and reply.get("id") == store.object_id:
        await services.objects.show_object(store.object_id, reply)
    return web.Response(body=data, status=status, headers=relayed)


def _watch(object_id: str, client_id: str, upstream: Upstream, now: datetime) -> Watch:
    """A store's storage watch. It holds nothing (storage is charged after
    the fact); its ``checks`` are the last day charged, as a date ordinal."""
    nothing = UsageEvent(
        request_id=f"{object_id}/storage",
        client_id=client_id,
        api_type=KIND,
        model=STORAGE_MODEL,
        endpoint=_ENDPOINT,
        status=0,
        created_at=now,
        currency="USD",
        exchange_rate=Decimal(1),  # nothing: no money, no rate
        estimated=True,
    )
    return Watch(object_id, KIND, client_id, upstream.name, Reservation(nothing, 0, now), now)


def _last_charged(watch: Watch) -> date | None:
    return date.fromordinal(watch.checks) if watch.checks > 0 else None


async def check_storage(services: Services, watch: Watch) -> None:
    """Charge a store's days that have ended since it was last charged, at
    the size the upstream shows now; then look again after the next
    midnight. One shown ``expired`` is charged to the day it expired; one
    the upstream no longer knows (deleted elsewhere) to yesterday, at its
    last known size; both are watched no more. Raises when the upstream
    cannot say (looked at again later)."""
    now = services.meter.clock()
    today = now.astimezone(UTC).date()
    yesterday = today - timedelta(days=1)
    upstream = services.router.named(watch.upstream)
    shown = (
        None if upstream is None else await shown_upstream(services, upstream, _COLLECTION, watch.object_id)
    )
    if upstream is None or shown is None:  # gone, or its upstream no longer configured: as last seen
        owned = (await services.objects.owned_objects([watch.object_id])).get(watch.object_id)
        last = {} if owned is None else (owned.detail or {}).get("object") or {}
        usage = storage_usage(last.get("usage_bytes"))
        if usage is None:  # never seen with a size: nothing better is known
            log.error(
                "vector_store_size_unknown", extra={"object": watch.object_id, "client": watch.client_id}
            )
            usage = Usage(estimated=True)
        await _charge_days(services, watch, upstream, usage, yesterday)
        if upstream is None:  # it may well still exist: charged at its last size until it is configured again
            log.warning(
                "vector_store_upstream_missing", extra={"object": watch.object_id, "upstream": watch.upstream}
            )
            await services.objects.check_again(watch.object_id, next_midnight(now), yesterday.toordinal())
        else:  # gone: no longer listed either
            await services.objects.end_watch(watch.object_id)
            await services.objects.forget_object(watch.object_id)
        return
    await services.objects.show_object(watch.object_id, shown)
    ended = expired_on(shown, today)
    if ended is not None:  # its data is gone: kept to the day it expired, and no more
        await _charge_days(services, watch, upstream, _size(shown, upstream), min(ended, today))
        await services.objects.end_watch(watch.object_id)
        return
    await _charge_days(services, watch, upstream, _size(shown, upstream), yesterday)
    await services.objects.check_again(watch.object_id, next_midnight(now), yesterday.toordinal())


async def delete_vector_store(
    request: web.Request, services: Services, store: OwnedObject, upstream: Upstream
) -> web.StreamResponse:
    """``DELETE /v1/vector_stores/{id}``: its days charged to today, then
    deleted; once the upstream has deleted it, forgotten and watched no more
    before the client hears so (to the end, even if the client leaves)."""
    return await services.shielded(_delete(request, services, store, upstream))


async def _delete(
    request: web.Request, services: Services, store: OwnedObject, upstream: Upstream
) -> web.StreamResponse:
    await _charge_to_date(services, store, upstream)
    path = f"{_ENDPOINT}/{store.object_id}"
    status, data, relayed, _ = await upstream_json(services, request, upstream, "DELETE", path)
    if status < 300:
        await services.objects.end_watch(store.object_id)
        await services.objects.forget_object(store.object_id)
    return web.Response(body=data, status=status, headers=relayed)


async def _charge_to_date(services: Services, store: OwnedObject, upstream: Upstream) -> None:
    """Before a store is deleted: every day it was kept and not yet charged,
    today's too (to the day it expired, for one that has). A watch another
    process holds is read as it is: the days it charged are durable."""
    now = services.meter.clock()
    today = now.astimezone(UTC).date()
    shown = await shown_upstream(services, upstream, _COLLECTION, store.object_id)
    if shown is None:
        return  # already gone upstream: its watch charges what is left
    usage = _size(shown, upstream)
    through = min(expired_on(shown, today) or today, today)
    claimed = await services.objects.claim_watches(now, 1, WATCH_LEASE, object_id=store.object_id)
    watch = claimed[0] if claimed else await services.objects.watch_of(store.object_id)
    if watch is None:
        return  # watched no more: charged to its end already
    try:
        await _charge_days(services, watch, upstream, usage, through)
    except BaseException:
        if claimed:  # its watcher looks again at once, from where it was
            await services.objects.check_again(store.object_id, now, watch.checks)
        raise
    if claimed:  # charged through today: if the delete fails, tomorrow's look goes on from here
        done = max(watch.checks, through.toordinal())
        await services.objects.check_again(store.object_id, next_midnight(now), done)


def _size(shown: dict[str, object], upstream: Upstream) -> Usage:
    usage = storage_usage(shown.get("usage_bytes"))
    if usage is None:  # looked at again later: a day is never charged at a size made up
        raise UpstreamUnavailable(
            f"upstream {upstream.name} showed no usable usage_bytes for {shown.get('id')}"
        )
    return usage


async def _charge_days(
    services: Services, watch: Watch, upstream: Upstream | None, usage: Usage, through: date
) -> None:
    days = days_to_charge(_last_charged(watch), watch.created_at.astimezone(UTC).date(), through)
    if not days:
        return
    meter = services.meter
    price = meter.catalog.resolve(STORAGE_MODEL, DEFAULT_PROVIDER if upstream is None else upstream.provider)
    terms = await terms_of(services, watch.client_id)
    tariff = await meter.rates.tariff(terms)
    now = meter.clock()
    holds = limits.late_holds(
        terms.limits,
        client_id=watch.client_id,
        model=STORAGE_MODEL,
        timezone=terms.timezone or meter.timezone,
        now=now,
    )
    for day in days:
        facts = CallFacts(
            request_id=storage_request_id(watch.object_id, day),
            client_id=watch.client_id,
            api_type=KIND,
            model=STORAGE_MODEL,
            endpoint=_ENDPOINT,
            family="passthrough",
            price=price,
            upstream=None if upstream is None else upstream.name,
        )
        event = charge(facts, usage, 200, tariff, now)
        await meter.charge_late(event, holds)
        services.metrics.call(event)
    await meter.ledger.flush()  # durable before its watch moves past these days
    log.info(
        "vector_store_storage_charged",
        extra={"object": watch.object_id, "client": watch.client_id, "days": len(days)},
    )
