"""What handlers reach through the application: typed app keys, one object each."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web

from taximeter.pricing.catalog import Catalog
from taximeter.proxy.clock import Clock
from taximeter.proxy.exports import ExportSender
from taximeter.proxy.gateway.auth import KeyCache
from taximeter.proxy.gateway.metering import Meter
from taximeter.proxy.gateway.upstreams import Upstreams
from taximeter.proxy.gauges import BudgetGauges
from taximeter.proxy.metrics import Metrics
from taximeter.proxy.operations import Operations
from taximeter.proxy.settings import Settings
from taximeter.proxy.webhooks import WebhookSender
from taximeter.store.base import Gate, Store, UpstreamObjects, Watches
from taximeter.store.changes import Changes
from taximeter.store.ledger import LedgerWriter

__all__ = [
    "CATALOG",
    "CHANGES",
    "CLOCK",
    "GATE",
    "GAUGES",
    "LEDGER",
    "METER",
    "METRICS",
    "OPERATIONS",
    "SERVICES",
    "SESSION",
    "SETTINGS",
    "STORE",
    "Services",
]

T = TypeVar("T")


class ObjectRecords(UpstreamObjects, Watches, Protocol):
    """Who owns each object the upstream keeps, and those watched until they end."""


@dataclass
class Services:
    settings: Settings
    meter: Meter
    router: Upstreams
    session: aiohttp.ClientSession
    webhooks: WebhookSender
    exports: ExportSender
    metrics: Metrics
    keys: KeyCache
    objects: ObjectRecords  # who owns each object the upstream keeps; those watched
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    # Open Realtime sessions, each by what closes it: at shutdown, closed
    # first (their responses charged), so none outlives the drain.
    sessions: set[Callable[[], Awaitable[None]]] = field(default_factory=set)

    async def shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` to its end even if the handler awaiting it is cancelled
        (a client that disconnects): a call the upstream charges for is always
        metered. Shutdown waits for these tasks."""
        task = asyncio.ensure_future(work)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        return await asyncio.shield(task)

    def shielded_later(self, work: Coroutine[Any, Any, object]) -> None:
        """``work`` run to its end in the background (shutdown waits for it)."""
        task = asyncio.ensure_future(work)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def drain(self) -> None:
        """Wait for every in-flight call to finish and be settled."""
        while self.inflight:
            await asyncio.gather(*self.inflight, return_exceptions=True)


SERVICES = web.AppKey("services", Services)
# Declared here, beside SERVICES, so the gateway's /budget/status reads it
# without importing the admin package.
OPERATIONS = web.AppKey("operations", Operations)

# The resources the start-up contexts open, one key each, in the order they open
# (proxy/app.py): a later one reaches an earlier one through its key.
SETTINGS = web.AppKey("settings", Settings)
CHANGES: web.AppKey[Changes] = web.AppKey("changes")  # word of changes made by other processes
GAUGES = web.AppKey("gauges", BudgetGauges)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
CATALOG = web.AppKey("catalog", Catalog)
METRICS = web.AppKey("metrics", Metrics)
STORE: web.AppKey[Store] = web.AppKey("store")
GATE: web.AppKey[Gate] = web.AppKey("gate")
LEDGER = web.AppKey("ledger", LedgerWriter)
METER = web.AppKey("meter", Meter)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def public_base(request: web.Request) -> str:
    """Where links to this server point (a portal link): the ``public_url``
    setting, else the address ``request`` came to."""
    return request.config_dict[SETTINGS].public_url or f"{request.scheme}://{request.host}"
