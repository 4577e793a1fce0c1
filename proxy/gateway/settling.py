"""How a call ends in the ledger: the gateway's side of charging.

Every way a forwarded call can end goes through one of these; the rules that
turn its usage into a priced event are in :mod:`taximeter.pricing.charge`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import aiohttp

from taximeter.pricing.catalog import Catalog, ModelPrice
from taximeter.pricing.charge import CallFacts, Tariff, charge
from taximeter.pricing.models import OwnedObject, Reservation, UsageEvent
from taximeter.pricing.money import money_text
from taximeter.pricing.usage import Usage
from taximeter.proxy.gateway.endpoints import Endpoint
from taximeter.proxy.gateway.forms import Form
from taximeter.proxy.gateway.limit_watch import watch_limits
from taximeter.proxy.gateway.ownership import record_created
from taximeter.proxy.gateway.upstreams import Upstream
from taximeter.proxy.services import Services

__all__ = [
    "CLIENT_CLOSED",
    "Call",
    "charged",
    "event_of",
    "record_failure",
    "record_lost",
    "settle",
    "settle_unaccounted",
    "tool_prices",
]

log = logging.getLogger("taximeter.proxy")

CLIENT_CLOSED = 499  # recorded status of a call whose client went away mid-stream


@dataclass
class Call:
    """One proxied call as it moves through the steps."""

    request_id: str
    client_id: str
    endpoint: Endpoint
    api_type: str
    model: str
    fields: dict[str, Any]
    form: Form | None
    price: ModelPrice | None
    end_user: str | None
    conversation: str | None
    route: Upstream  # the upstream that serves it, picked once
    tariff: Tariff  # what a USD costs its client: the rate in force at admission, and its markup
    started: float = field(default_factory=time.monotonic)
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    upstream: aiohttp.ClientResponse | None = None
    estimate: UsageEvent | None = None  # what was reserved; charged if the call ends unaccounted
    reservation: Reservation | None = None  # as admitted
    reserved: Usage = field(default_factory=Usage)  # what estimate prices: the floor of a lost count
    upload_seconds: Decimal | None = None  # length of an uploaded audio file, read once
    settled: bool = False
    created: list[tuple[str, str]] = field(default_factory=list)  # (kind, id) of what its response made
    upstream_started: float = 0.0
    upstream_ended: float | None = None  # when its body was read to the end

    def abandon(self) -> None:
        """The client left: stop the upstream call (and its spend) now."""
        self.client_gone.set()
        if self.upstream is not None:
            self.upstream.close()


def event_of(services: Services, call: Call, usage: Usage, status: int) -> UsageEvent:
    """The ledger event of ``call``, ended with ``status`` after ``usage``:
    the rules are in :mod:`taximeter.pricing.charge`."""
    facts = CallFacts(
        request_id=call.request_id,
        client_id=call.client_id,
        api_type=call.api_type,
        model=call.model,
        endpoint=call.endpoint.path,
        family=call.endpoint.family,
        price=call.price,
        end_user=call.end_user,
        conversation=call.conversation,
        reserved=call.reserved,
        upstream=call.route.name,
        regional=call.route.regional,
        latency_ms=None if status == 0 else round((time.monotonic() - call.started) * 1000),
        tool_prices=tool_prices(services.meter.catalog, usage, call.route.provider),
    )
    return charge(facts, usage, status, call.tariff, services.meter.clock())


def tool_prices(catalog: Catalog, usage: Usage, provider: str) -> dict[str, ModelPrice]:
    """The prices of the image models the call's tools used, as its upstream's provider lists them."""
    found = {model: catalog.resolve(model, provider) for model in {i.model for i in usage.tool_images}}
    return {model: price for model, price in found.items() if price is not None}


async def settle(services: Services, call: Call, usage: Usage, status: int) -> None:
    event = event_of(services, call, usage, status)
    call.settled = True
    call.upstream_ended = call.upstream_ended or time.monotonic()
    await charged(services, event)
    if call.created and call.upstream is not None and call.upstream.status < 400:
        owner, upstream = call.client_id, call.route.name
        owned = [OwnedObject(i, kind, owner, upstream, event.created_at) for kind, i in call.created]
        await record_created(services.objects, owned, call.request_id)
    log.info(
        "request_metered",
        extra={
            "request_id": call.request_id,
            "client": call.client_id,
            "model": call.model,
            "api_type": call.api_type,
            "status": status,
            "tokens": event.tokens,
            "cost": money_text(event.cost),
            "estimated": event.estimated,
            "latency_ms": round((time.monotonic() - call.started) * 1000, 1),
            "upstream_ms": round((call.upstream_ended - call.upstream_started) * 1000, 1),
            "overhead_ms": round(
                (time.monotonic() - call.started - (call.upstream_ended - call.upstream_started)) * 1000, 1
            ),
        },
    )


async def charged(services: Services, event: UsageEvent) -> None:
    """``event`` in place of its call's reservation (the ledger, the gate),
    told to the metrics and to the alerts of the limits it counts on."""
    counted = await services.meter.settle(event)
    services.metrics.call(event)
    if counted:
        await watch_limits(services, event, counted)


async def settle_unaccounted(services: Services, call: Call) -> None:
    """A call that ended by a path nothing above expected (the client vanished
    as the response started, say). If it reached the upstream, it may have been
    charged there: charge its estimate, flagged. If not, free its reservation."""
    if call.upstream is None or call.estimate is None:
        await services.meter.release(call.client_id, call.request_id)
        return
    call.settled = True
    event = replace(call.estimate, status=CLIENT_CLOSED, estimated=True, created_at=services.meter.clock())
    log.warning("call_unaccounted", extra={"request_id": call.request_id, "client": call.client_id})
    await charged(services, event)


async def record_failure(services: Services, call: Call, status: int) -> None:
    """A call the upstream refused or never got: recorded at no cost."""
    await settle(services, call, Usage(), status)


async def record_lost(services: Services, call: Call, status: int) -> None:
    """A call the upstream may have run, whose usage never came back: charged
    as reserved, flagged ``estimated``."""
    await settle(services, call, call.reserved, status)  # flagged estimated since _estimate
