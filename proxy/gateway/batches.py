"""Batches (spec section 4b): admitted by reserving what their input file
asks, at batch prices; watched upstream until they end; then each line of
their output (and error) file charged as its own event, and the reservation
let go.

A batch runs upstream for up to a day, long after the call that made it and
maybe the process that took it. So its reservation is kept in the gate
(held again, and for longer, at every look: a gate that lost it holds it
anew) and in the store with the watch (``watches``), and any process's
watcher (:mod:`.watcher`) may finish it: each line is charged by a key
unique in its batch, so a line charged twice is recorded and counted once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from taximeter.pricing import limits
from taximeter.pricing.batch_cost import estimate_batch, one_line
from taximeter.pricing.batch_input import BATCH_ENDPOINTS, BatchInput
from taximeter.pricing.batch_output import TERMINAL, BatchOutputReader, OutputLine, line_usage
from taximeter.pricing.catalog import ModelPrice
from taximeter.pricing.charge import CallFacts, charge
from taximeter.pricing.models import ApiKey, Hold, OwnedObject, Reservation, Terms, UsageEvent, Watch
from taximeter.pricing.money import to_nanos
from taximeter.pricing.usage import Usage
from taximeter.proxy.errors import (
    InvalidInput,
    NotFoundError,
    TaximeterError,
    UpstreamUnavailable,
)
from taximeter.proxy.gateway import auth
from taximeter.proxy.gateway.bodies import json_object, read_body
from taximeter.proxy.gateway.endpoints import ENDPOINTS
from taximeter.proxy.gateway.exchange import check_model_allowed
from taximeter.proxy.gateway.files import own, read_batch_input, upstream_failure, upstream_json
from taximeter.proxy.gateway.objects import Reference, valid_id
from taximeter.proxy.gateway.ownership import check_references
from taximeter.proxy.gateway.upstreams import Upstream
from taximeter.proxy.gateway.watching import (
    WATCH_LEASE,
    charge_estimate,
    done_with,
    finish_now,
    hold_on,
    look_upstream,
    tariff_of,
    terms_of,
)
from taximeter.proxy.middleware import REQUEST_ID
from taximeter.proxy.services import Services
from taximeter.store.base import StoreUnavailable

__all__ = ["check_batch", "create_batch", "show_batch"]

log = logging.getLogger("taximeter.proxy")

_CHUNK = 256 * 1024
_RENEW_S = 60.0  # how often a watcher charging a batch's lines renews its lease on it
_GIVE_UP = timedelta(days=7)  # a batch shown running this long after its day's window: charged as reserved


async def create_batch(request: web.Request, services: Services) -> web.StreamResponse:
    """``POST /v1/batches``: the caller's own input file, every line of which
    taximeter can estimate, admitted by reserving it all at batch prices."""
    key = await auth.authenticate(request, services.keys)
    fields = json_object(await read_body(request, services.settings.max_body_bytes))
    endpoint = fields.get("endpoint")
    if not isinstance(endpoint, str) or endpoint not in BATCH_ENDPOINTS:
        raise InvalidInput(
            f"endpoint must be one of {', '.join(sorted(BATCH_ENDPOINTS))}", param="endpoint", status=400
        )
    file_id = fields.get("input_file_id")
    named = Reference("file", str(file_id) if valid_id(file_id) else "", "input_file_id", valid_id(file_id))
    await check_references(services.objects, key.client_id, [named])
    owned = (await services.objects.owned_objects([named.object_id]))[named.object_id]
    upstream = services.router.named(owned.upstream)
    if upstream is None:
        raise NotFoundError(f"the upstream that holds {file_id!r} is no longer configured")
    read = await _input_of(services, owned, upstream)
    with services.metrics.refusals(key.client_id):
        reservation = await _reservation(request, services, key, upstream, endpoint, read)
        await services.meter.admit_long_running(reservation)
    # Forwarded as read here: a body with a key twice would name one file
    # here and maybe another upstream.
    sent = orjson.dumps(fields)
    return await services.shielded(_create(request, services, key, upstream, sent, reservation, read))


async def _input_of(services: Services, owned: OwnedObject, upstream: Upstream) -> BatchInput:
    """What the input file asks, as read at its upload (read now if it was not)."""
    detail = owned.detail or {}
    if "batch_input" in detail:
        read = BatchInput.from_json(detail["batch_input"])
    elif (detail.get("object") or {}).get("purpose") == "batch":
        read = await read_batch_input(services, upstream, owned.object_id)
    else:
        raise InvalidInput(
            "input_file_id must name a file uploaded with purpose batch", param="input_file_id"
        )
    if read.lines == 0:
        raise InvalidInput("the input file holds no requests", param="input_file_id", status=400)
    if read.unreadable:
        raise InvalidInput(
            f"{read.unreadable} of the input file's {read.lines} lines are not requests taximeter can "
            "estimate (each line must be JSON with a url the Batch API takes and a body naming its model), "
            "so the batch cannot be reserved",
            param="input_file_id",
            status=400,
        )
    return read


async def _reservation(
    request: web.Request,
    services: Services,
    key: ApiKey,
    upstream: Upstream,
    endpoint: str,
    read: BatchInput,
) -> Reservation:
    meter = services.meter
    if read.endpoints != {endpoint}:
        raise InvalidInput(
            f"the input file's lines call {', '.join(sorted(read.endpoints))}, not {endpoint}",
            param="endpoint",
            status=400,
        )
    family = BATCH_ENDPOINTS[endpoint]
    prices: dict[str, ModelPrice | None] = {}
    for model in read.models:
        check_model_allowed(model, key.terms)
        prices[model] = meter.resolve_price(model, family != "moderation", upstream.provider)
    tariff = await meter.rates.tariff(key.terms)
    estimate = estimate_batch(read, prices, tariff)
    now = meter.clock()
    event = UsageEvent(
        request_id=request[REQUEST_ID],
        client_id=key.client_id,
        api_type=ENDPOINTS[endpoint].api_type,
        model=estimate.dearest,
        endpoint=endpoint,
        status=0,
        created_at=now,
        currency=tariff.currency,
        exchange_rate=tariff.exchange_rate,
        markup=tariff.markup,
        cost_usd=estimate.cost_usd,
        cost=estimate.cost,
        input_tokens=estimate.usage.input_tokens,
        output_tokens=estimate.usage.output_tokens,
        estimated=True,
        service_tier="batch",
        price_source=f"estimate of {read.lines} lines",
        upstream=upstream.name,
    )
    holds = limits.long_running_holds(
        key.terms.limits,
        client_id=key.client_id,
        models=estimate.per_model,
        timezone=key.terms.timezone or meter.timezone,
        now=now,
    )
    expires = now + timedelta(seconds=services.settings.watch_hold_s)
    return Reservation(event, to_nanos(event.cost), expires, holds)


async def _create(
    request: web.Request,
    services: Services,
    key: ApiKey,
    upstream: Upstream,
    body: bytes,
    reservation: Reservation,
    read: BatchInput,
) -> web.StreamResponse:
    meter = services.meter
    try:
        status, data, relayed, reply = await upstream_json(
            services, request, upstream, "POST", "/v1/batches", body
        )
    except TaximeterError as exc:
        if isinstance(exc.__cause__, aiohttp.ClientConnectorError):  # never sent: nothing runs
            await meter.release(key.client_id, reservation.request_id)
        else:  # it may run upstream, unseen: charged as reserved, in place of its reservation
            await meter.settle(replace(reservation.event, status=exc.status, created_at=meter.clock()))
        raise
    batch_id = reply.get("id") if status < 300 and isinstance(reply, dict) else None
    if status < 300 and not valid_id(batch_id):  # it may run, unseen: charged as reserved
        log.error("batch_unreadable", extra={"client": key.client_id, "request_id": reservation.request_id})
        await meter.settle(replace(reservation.event, status=502, created_at=meter.clock()))
        return web.Response(body=data, status=status, headers=relayed)
    if not valid_id(batch_id):  # refused: nothing runs
        await meter.release(key.client_id, reservation.request_id)
        return web.Response(body=data, status=status, headers=relayed)
    assert isinstance(batch_id, str)
    now = meter.clock()
    shown = {"object": reply, "batch_input": read.to_json()}
    made = OwnedObject(batch_id, "batch", key.client_id, upstream.name, now, shown)
    try:
        await services.objects.own_objects([made])
        watch = Watch(batch_id, "batch", key.client_id, upstream.name, reservation, now)
        await services.objects.watch(watch, now + timedelta(seconds=services.settings.watch_check_s))
    except StoreUnavailable as exc:
        # Unwatched, its reservation is charged at its estimate when it expires.
        log.error("batch_unwatched", extra={"batch": batch_id, "client": key.client_id, "error": str(exc)})
    return web.Response(body=data, status=status, headers=relayed)


async def show_batch(
    request: web.Request, services: Services, batch: OwnedObject, upstream: Upstream, path: str
) -> web.StreamResponse:
    """``GET /v1/batches/{id}`` and ``POST .../cancel`` of the caller's batch,
    relayed. One the upstream shows ended is charged now, unless a watcher
    is at it already: its files (output, errors) become the caller's only
    once its lines are charged, so none is deleted before it is read."""
    await read_body(request, services.settings.max_body_bytes)  # none is expected
    status, data, relayed, reply = await upstream_json(services, request, upstream, request.method, path)
    if status < 300 and isinstance(reply, dict) and reply.get("id") == batch.object_id:
        if _ended(reply):
            await services.shielded(_finish_now(services, batch.object_id, reply))
        else:
            await services.objects.show_object(batch.object_id, reply)
    return web.Response(body=data, status=status, headers=relayed)


def _ended(shown: dict[str, Any]) -> bool:
    state = shown.get("status")
    return isinstance(state, str) and state in TERMINAL


async def _finish_now(services: Services, batch_id: str, shown: dict[str, Any]) -> None:
    async def check(services: Services, watch: Watch) -> bool:
        return await check_batch(services, watch, shown)

    try:
        await finish_now(services, batch_id, check)
    except (TaximeterError, StoreUnavailable) as exc:  # its watcher finishes it: the owner still sees it
        log.warning("batch_not_finished", extra={"batch": batch_id, "error": str(exc)})


async def _own_files(
    services: Services, request_id: str, batch: Watch, upstream: Upstream, shown: dict[str, Any]
) -> None:
    for name in ("output_file_id", "error_file_id"):
        file_id = shown.get(name)
        if valid_id(file_id):
            made = {"id": file_id, "object": "file", "purpose": "batch_output"}
            await own(services, request_id, "file", batch.client_id, upstream, made)


async def check_batch(services: Services, watch: Watch, shown: dict[str, Any] | None = None) -> bool:
    """Look at a watched batch upstream (or at ``shown``, as it was just
    seen); once it has ended, charge its lines and let its reservation go.
    True when it is done with."""
    looked = await look_upstream(services, watch, "batches", shown)
    if looked is None:
        return True
    upstream, shown = looked
    await hold_on(services, watch)  # held while it runs, and until its lines are counted
    if not _ended(shown):
        if services.meter.clock() - watch.created_at > _GIVE_UP:
            await charge_estimate(services, watch, "it still runs, long past its completion window")
            return True
        await services.objects.show_object(watch.object_id, shown)
        return False
    owned = (await services.objects.owned_objects([watch.object_id])).get(watch.object_id)
    read = None if owned is None else (owned.detail or {}).get("batch_input")
    lines = _Lines(services, watch, upstream, None if read is None else BatchInput.from_json(read))
    await lines.start()
    for name in ("output_file_id", "error_file_id"):
        if valid_id(shown.get(name)):
            await lines.charge_file(str(shown[name]), name.removesuffix("_file_id"))
    await lines.close()
    log.info(
        "batch_charged",
        extra={
            "batch": watch.object_id,
            "client": watch.client_id,
            "status": shown.get("status"),
            "lines": lines.charged,
        },
    )
    await services.meter.ledger.flush()
    await _own_files(services, watch.reservation.request_id, watch, upstream, shown)
    await services.objects.show_object(watch.object_id, shown)
    await done_with(services, watch)
    return True


class _Lines:
    """The charging of one ended batch's lines, file by file, then of the
    batch itself: a free event under its creation's request id, which takes
    the place of its reservation (so that is never charged as well)."""

    def __init__(self, services: Services, watch: Watch, upstream: Upstream, read: BatchInput | None) -> None:
        self.services = services
        self.watch = watch
        self.upstream = upstream
        self.read = read
        estimate = watch.reservation.event
        self.endpoint = estimate.endpoint
        self.family = BATCH_ENDPOINTS[estimate.endpoint]
        self.tariff = tariff_of(watch)
        self.charged = 0
        self._terms = Terms()
        self._holds: dict[str, tuple[Hold, ...]] = {}
        # Each priced model the input names, by its catalog entry: a line is
        # recorded under the model its request named, as any call is.
        self._named: dict[int, tuple[str, ModelPrice]] = {}
        self._dearest: tuple[str, ModelPrice | None, Usage] = (estimate.model, None, Usage(estimated=True))
        self._renewed = time.monotonic()

    async def start(self) -> None:
        self._terms = await terms_of(self.services, self.watch.client_id)
        catalog, provider = self.services.meter.catalog, self.upstream.provider
        if self.read is None or not self.read.models:
            model = self._dearest[0]
            self._dearest = (model, catalog.resolve(model, provider), self._dearest[2])
            return
        prices = {model: catalog.resolve(model, provider) for model in sorted(self.read.models)}
        for model, price in prices.items():
            if price is not None:
                self._named.setdefault(id(price), (model, price))
        model, usage = one_line(self.read, prices, self.tariff)
        self._dearest = (model, prices[model], usage)

    async def charge_file(self, file_id: str, kind: str) -> None:
        """Charge every line of one of the batch's files, as it streams in."""
        reader = BatchOutputReader(kind)
        url = self.upstream.url(f"/v1/files/{file_id}/content", "")
        # However long the file takes, as long as it keeps coming.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.services.settings.upstream_timeout_s)
        try:
            async with self.services.session.get(
                url, headers=self.upstream.credentials(), timeout=timeout
            ) as up:
                if up.status >= 300:
                    raise UpstreamUnavailable(
                        f"upstream {self.upstream.name} answered {up.status} for a batch's {kind} file"
                    )
                async for chunk in up.content.iter_chunked(_CHUNK):
                    await asyncio.to_thread(reader.feed, chunk)
                    await self._charge(reader.take())
            reader.end()
            await self._charge(reader.take())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise upstream_failure(exc, self.upstream) from exc

    async def close(self) -> None:
        """The batch's own event: free, in place of its reservation."""
        meter = self.services.meter
        estimate = self.watch.reservation.event
        closing = replace(
            estimate,
            status=200,
            created_at=meter.clock(),
            input_tokens=0,
            output_tokens=0,
            cost_usd=Decimal(0),
            cost=Decimal(0),
            estimated=False,
            price_source=None,
            batch_id=self.watch.object_id,
        )
        await meter.charge_late(closing, ())

    async def _charge(self, lines: list[OutputLine]) -> None:
        meter = self.services.meter
        for line in lines:
            event = self._event(line)
            await meter.charge_late(event, self._holds_of(event.model))
            self.services.metrics.call(event)
            self.charged += 1
        if time.monotonic() - self._renewed > _RENEW_S:  # still at it: no other watcher takes it
            self._renewed = time.monotonic()
            await self.services.objects.renew_watch(self.watch.object_id, meter.clock() + WATCH_LEASE)

    def _event(self, line: OutputLine) -> UsageEvent:
        meter = self.services.meter
        usage, status = line_usage(self.family, line)
        model, price, one = self._dearest
        named = line.body.get("model") if isinstance(line.body, dict) else None
        if isinstance(named, str) and 0 < len(named) <= 256:
            found = meter.catalog.resolve(named, self.upstream.provider)
            if found is not None:  # as the response names it (a dated name: the model asked for)
                model, price = self._named.get(id(found), (named, found))
        facts = CallFacts(
            request_id=f"{self.watch.object_id}/{line.key}",
            client_id=self.watch.client_id,
            api_type=ENDPOINTS[self.endpoint].api_type,
            model=model,
            endpoint=self.endpoint,
            family=self.family,
            price=price,
            reserved=one,
            upstream=self.upstream.name,
            regional=self.upstream.regional,
        )
        event = charge(facts, usage, status, self.tariff, meter.clock())
        return replace(event, batch_id=self.watch.object_id)

    def _holds_of(self, model: str) -> tuple[Hold, ...]:
        if model not in self._holds:
            meter = self.services.meter
            self._holds[model] = limits.late_holds(
                self._terms.limits,
                client_id=self.watch.client_id,
                model=model,
                timezone=self._terms.timezone or meter.timezone,
                now=meter.clock(),
            )
        return self._holds[model]
