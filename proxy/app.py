"""The aiohttp application: wiring, routes and lifecycle.

One start-up context per resource, in order (store, gate, ledger, HTTP
session, services, webhooks, sweeper): a failure releases what was opened.

Where the answers are (one hop from here):

- why a call got a 429: the rule is ``pricing/budgets.py`` (``admission``);
  who asks it, and how the gates fall back, ``gateway/metering.py``;
- what a webhook body holds: ``pricing/budgets.py`` (``alert_payload``);
  how it is signed and retried, ``webhooks.py``;
- when a budget resets: ``pricing/budgets.py`` (``period_bounds``, ``roll``),
  rolled on access and by ``gateway/sweeper.py``;
- how a call is priced (TTS included): ``pricing/charge.py`` takes the usage
  read by ``pricing/extract.py`` (TTS: characters, or the measured length
  of token-priced audio) and the rates of ``pricing/catalog.py``;
- where a stream's usage is read: ``pricing/stream_usage.py`` (``StreamUsage``),
  fed message by message by ``gateway/relay.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import date, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from taximeter.pricing.catalog import Catalog, load_catalog
from taximeter.pricing.models import BudgetState, Hold, UsageEvent
from taximeter.proxy.admin.admin import admin_app
from taximeter.proxy.clock import Clock, system_clock
from taximeter.proxy.dashboard.dashboard import DASHBOARD, Dashboard
from taximeter.proxy.dashboard.languages import Languages, load_catalogs
from taximeter.proxy.dashboard.pages import load_pages
from taximeter.proxy.dashboard.sessions import Sessions
from taximeter.proxy.dashboard.site import dashboard_app, portal_app
from taximeter.proxy.exports import ExportSender, Sink
from taximeter.proxy.forecasts import ForecastAlerts
from taximeter.proxy.gateway.auth import KeyCache
from taximeter.proxy.gateway.exchange import RateBook
from taximeter.proxy.gateway.metering import Meter
from taximeter.proxy.gateway.proxying import handle_proxy
from taximeter.proxy.gateway.retention import trim_forever
from taximeter.proxy.gateway.status import status_routes
from taximeter.proxy.gateway.sweeper import sweep_forever
from taximeter.proxy.gateway.upstreams import Upstreams
from taximeter.proxy.gateway.watcher import hold_all, watch_forever
from taximeter.proxy.gauges import BudgetGauges
from taximeter.proxy.logs import protect_logs
from taximeter.proxy.metrics import Metrics
from taximeter.proxy.middleware import json_error_middleware, request_id_middleware
from taximeter.proxy.operations import BudgetHook, Operations
from taximeter.proxy.services import (
    CATALOG,
    CHANGES,
    CLOCK,
    GATE,
    GAUGES,
    LEDGER,
    METER,
    METRICS,
    OPERATIONS,
    SERVICES,
    SESSION,
    SETTINGS,
    STORE,
    Services,
)
from taximeter.proxy.settings import Settings
from taximeter.proxy.webhooks import Webhook, WebhookSender
from taximeter.store.base import Gate, RecordResult, StoreUnavailable
from taximeter.store.changes import open_changes
from taximeter.store.factory import open_gate, open_store
from taximeter.store.ledger import LedgerWriter
from taximeter.store.store_gate import StoreGate

__all__ = ["create_app"]


def create_app(settings: Settings, *, clock: Clock = system_clock) -> web.Application:
    """The proxy as an aiohttp app; backends open on start-up, close on clean-up."""
    # Here, not only in `serve`: any server that runs this app (tests too) keeps
    # keys out of aiohttp's error logs and drops connections that stall.
    protect_logs(_secrets(settings))
    # The root app's middlewares wrap the sub-apps' too: every request gets an
    # id; the JSON errors are those of the root's own routes (the gateway,
    # status, unknown paths), as the sub-apps render their own.
    app = web.Application(
        middlewares=[request_id_middleware, json_error_middleware],
        client_max_size=settings.max_body_bytes,  # read from the root app, for every route
        handler_args=_connection_limits(settings),
    )
    app.add_routes(status_routes())
    app.router.add_route("*", "/v1/{tail:.*}", handle_proxy)
    app.add_subapp("/admin", admin_app())
    app.add_subapp("/dashboard", dashboard_app())
    app.add_subapp("/portal", portal_app())
    app[SETTINGS] = settings
    app[CLOCK] = clock
    # One context per resource, in the order they depend on each other: aiohttp
    # closes them in reverse, and only those that finished opening, so a failed
    # start releases exactly what it opened. Shutdown runs: background tasks
    # stop, calls in flight finish, session, ledger (drained), meter, gate, store.
    app.cleanup_ctx.extend(_CONTEXTS)
    app.on_shutdown.append(_close_sessions)
    return app


async def _close_sessions(app: web.Application) -> None:
    """Shutdown begins: open Realtime sessions are closed (their responses
    charged) instead of holding the drain open for as long as they last."""
    services = app.get(SERVICES)
    if services is not None:
        await asyncio.gather(*(close() for close in list(services.sessions)), return_exceptions=True)


def _connection_limits(settings: Settings) -> dict[str, Any]:
    """Arguments of aiohttp's RequestHandler (web_protocol.py) for every connection.

    aiohttp 3.14 has no timeout on reading a request's head; its keep-alive
    timer is the one that closes a connection that has sent no complete head:
    armed when the connection opens and again after each response, it closes the
    connection only while no request is being handled (a long stream is never
    cut), and bytes trickling in do not push it back. So ``header_timeout_s`` is
    that timer. Passed as handler_args, it overrides run_app's own default (75 s)
    and the test server's (3630 s).
    """
    return {
        "keepalive_timeout": settings.header_timeout_s,
        # aiohttp's defaults, pinned so an upgrade cannot loosen them: at most
        # 128 header lines of 8190 bytes each, a request line of 8190 bytes.
        "max_line_size": 8190,
        "max_field_size": 8190,
        "max_headers": 128,
    }


def _secrets(settings: Settings) -> list[str]:
    """The configured secrets that must never appear in a log line."""
    found = [settings.admin_token, settings.metrics_token, settings.upstream_api_key]
    found += [upstream.api_key for upstream in settings.upstreams]
    found += [webhook.secret for webhook in [*settings.webhooks, *settings.exports]]
    return [secret.get_secret_value() for secret in found if secret is not None]


def _catalog_as_of(files: list[Path], day: date) -> Catalog:
    return load_catalog(*files, today=day)


async def _catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    """The price catalog and the metrics that label by it (nothing to close)."""
    settings = app[SETTINGS]
    catalog = await asyncio.to_thread(load_catalog, *settings.pricing_files, today=app[CLOCK]().date())
    app[CATALOG] = catalog
    app[METRICS] = Metrics(catalog)
    yield


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """The store, migrated; closed last."""
    store = await open_store(app[SETTINGS].database_url)
    try:
        await store.migrate()
        store.observe(app[METRICS].budget_alert)
        store.export_to([sink.name for sink in app[SETTINGS].exports])  # owed from the next event on
        app[STORE] = store
        app[CHANGES] = await open_changes(app[SETTINGS].database_url)
        try:
            yield
        finally:
            await app[CHANGES].close()
    finally:
        await store.close()


async def _gate_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    gate = open_gate(
        settings.redis_url,
        prefix=settings.redis_prefix,
        refresh_s=settings.gate_refresh_s,
        redis_cluster=settings.redis_cluster,
    )
    try:
        app[GATE] = gate
        yield
    finally:
        await gate.close()


async def _meter_ctx(app: web.Application) -> AsyncIterator[None]:
    """The meter and its ledger writer (started by :func:`_ledger_ctx`, which
    closes first: the meter then tells the gate of the last events recorded)."""
    app[LEDGER], app[METER] = _new_meter(app)
    app[GAUGES] = BudgetGauges(app[STORE], app[METRICS], app[CLOCK])
    try:
        yield
    finally:
        await app[GAUGES].close()
        await app[METER].feedback.close()  # the gate hears of the last events recorded before it closes


def _new_meter(app: web.Application) -> tuple[LedgerWriter, Meter]:
    settings, store, metrics = app[SETTINGS], app[STORE], app[METRICS]
    forecasts = ForecastAlerts(store, app[CLOCK])

    async def recorded(event: UsageEvent, result: RecordResult) -> None:
        metrics.ledger_pending.set(ledger.pending)
        meter.feedback.recorded(event, result.recorded)
        if result.state is not None:
            metrics.budget(result.state)
            await forecasts.consider(result.state)

    def quarantined(event: UsageEvent, error: str) -> None:
        # Refused by the store and set aside: counted as written, in no budget.
        metrics.ledger_quarantined.inc()
        metrics.ledger_pending.set(ledger.pending)
        # Done with, as far as the gate is concerned: it forgets its copy of the
        # event, or a sweep would hand the same refused event back to the ledger.
        meter.feedback.recorded(event, False)

    ledger = LedgerWriter(
        store,
        max_pending=settings.ledger_max_pending,
        on_recorded=recorded,
        on_quarantined=quarantined,
        clock=app[CLOCK],
    )
    meter = Meter(
        store=store,
        gate=app[GATE],
        ledger=ledger,
        catalog=app[CATALOG],
        load_catalog=functools.partial(_catalog_as_of, settings.pricing_files),
        rates=RateBook(store, currency=settings.currency, first_rate=settings.exchange_rate),
        timezone=settings.timezone,
        allow_unpriced=settings.unpriced_models == "allow",
        # A live call ends within the upstream timeout; only a dead process's outlives this.
        reservation_ttl_s=settings.upstream_timeout_s + settings.reservation_grace_s,
        record_grace_s=settings.reservation_grace_s,
        # The gate down (Redis): admit under the budget's row lock rather than let spend through.
        fallback=StoreGate(store),
        clock=app[CLOCK],
    )
    return ledger, meter


async def _ledger_ctx(app: web.Application) -> AsyncIterator[None]:
    ledger = app[LEDGER]
    ledger.start()
    try:
        yield
    finally:
        # A store still down cannot hold up exit.
        await ledger.close(timeout_s=app[SETTINGS].ledger_drain_s)


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One pooled session for every upstream call; no per-host connection cap."""
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(
        total=settings.upstream_timeout_s, sock_connect=settings.upstream_connect_timeout_s
    )
    session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
    try:
        app[SESSION] = session
        yield
    finally:
        await session.close()


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    """What handlers reach: services, operations, the dashboard. On the way
    out, calls still relaying are finished and metered before the session closes."""
    settings, store, clock = app[SETTINGS], app[STORE], app[CLOCK]
    webhooks = WebhookSender(
        store,
        app[SESSION],
        [Webhook(w.url, w.secret.get_secret_value()) for w in settings.webhooks if w.secret],
        clock=clock,
        timeout_s=settings.webhook_timeout_s,
        retry_max_s=settings.webhook_retry_max_s,
    )
    exports = ExportSender(
        store,
        app[SESSION],
        [
            Sink(e.name, e.url, e.secret.get_secret_value(), e.batch_size)
            for e in settings.exports
            if e.secret
        ],
        clock=clock,
        timeout_s=settings.webhook_timeout_s,
        retry_max_s=settings.webhook_retry_max_s,
    )
    services = Services(
        settings=settings,
        meter=app[METER],
        router=Upstreams(settings.resolved_upstreams(), app[CATALOG].provider_for),
        session=app[SESSION],
        webhooks=webhooks,
        exports=exports,
        metrics=app[METRICS],
        keys=KeyCache(store, ttl_s=settings.key_cache_s, changes=app[CHANGES], on_news=_on_news(app)),
        objects=store,
    )
    app[SERVICES] = services
    app[OPERATIONS] = Operations(
        store,
        timezone=settings.timezone,
        currency=settings.currency,
        clock=clock,
        on_budget_change=_gate_refresher(app[METRICS], app[METER]),
        flush_ledger=app[LEDGER].flush,
        on_key_revoked=services.keys.forget,
        on_terms_changed=services.keys.forget_client,
        on_rate_set=app[METER].rates.put,
        first_rate=settings.exchange_rate,
        read_counters=_counters_of(app[METER].gate),
        announce=app[CHANGES].announce,
        ledger_retention_months=settings.ledger_retention_months,
    )
    app[DASHBOARD] = await _dashboard(app)
    try:
        yield
    finally:
        await services.drain()


def _on_news(app: web.Application) -> Callable[[], None]:
    """Another process changed something: this one's copies and gauges follow."""

    def heard() -> None:
        app[METER].changed_elsewhere()
        app[GAUGES].follow()

    return heard


def _on_rolled(app: web.Application) -> Callable[[], None]:
    """A period rolled over here: this process's gauges follow, and every
    other process is told (theirs follow too)."""

    def rolled() -> None:
        app[GAUGES].follow()
        app[SERVICES].shielded_later(app[CHANGES].announce())

    return rolled


def _gate_refresher(metrics: Metrics, meter: Meter) -> BudgetHook:
    async def refresh_gate(client_id: str, state: BudgetState | None, now: datetime) -> None:
        # Re-read after the flush, so the copy includes this process's in-flight events.
        if state is not None:
            metrics.budget(state)
        else:
            metrics.drop_budget(client_id)
        try:
            await meter.rebuild(client_id, now)
        except StoreUnavailable:
            meter.mark_stale(client_id)  # the store has the change; the gate catches up later

    return refresh_gate


async def _dashboard(app: web.Application) -> Dashboard:
    settings = app[SETTINGS]
    admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None
    sessions = None
    if admin_token is not None:
        sessions = Sessions(
            app[STORE], admin_token, lifetime_s=settings.dashboard_session_s, clock=app[CLOCK]
        )
    return Dashboard(
        pages=await asyncio.to_thread(load_pages),
        sessions=sessions,
        ops=app[OPERATIONS],
        languages=Languages(await asyncio.to_thread(load_catalogs), settings.locale),
        frame_ancestors=tuple(settings.portal_frame_ancestors),
    )


def _counters_of(gate: Gate) -> Callable[[list[Hold]], Awaitable[list[tuple[int, int] | None]]]:
    """The gate's limit counters, or none while it cannot be reached (the ledger tells then)."""

    async def read(holds: list[Hold]) -> list[tuple[int, int] | None]:
        try:
            return await gate.limit_counters(holds)
        except StoreUnavailable:
            return [None for _ in holds]

    return read


async def _sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    with contextlib.suppress(StoreUnavailable):  # a store down now: the first sweep reads them
        await app[METER].rates.refresh()
    sweeping = sweep_forever(app[METER], app[SETTINGS].sweep_interval_s, _on_rolled(app))
    following = app[GAUGES].follow_changes(app[CHANGES], app[SETTINGS].sweep_interval_s)
    async with _background(sweeping, "taximeter-sweeper"), _background(following, "taximeter-gauges"):
        yield


async def _watcher_ctx(app: web.Application) -> AsyncIterator[None]:
    # Before the first call: a gate in this process (or an emptied Redis)
    # holds none of the reservations of what runs upstream meanwhile.
    with contextlib.suppress(StoreUnavailable):
        await hold_all(app[SERVICES])
    watching = watch_forever(app[SERVICES], app[SETTINGS].sweep_interval_s)
    async with _background(watching, "taximeter-watcher"):
        yield


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    months = app[SETTINGS].ledger_retention_months
    if months is None:
        yield
        return
    trimming = trim_forever(app[STORE], months, app[CLOCK], app[SETTINGS].sweep_interval_s)
    async with _background(trimming, "taximeter-retention"):
        yield


async def _exports_ctx(app: web.Application) -> AsyncIterator[None]:
    deliver = app[SERVICES].exports.run_forever(app[SETTINGS].sweep_interval_s)
    async with _background(deliver, "taximeter-exports"):
        yield


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    deliver = app[SERVICES].webhooks.run_forever(app[SETTINGS].sweep_interval_s)
    async with _background(deliver, "taximeter-webhooks"):
        yield


@contextlib.asynccontextmanager
async def _background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """``work`` as a task for as long as the block runs, cancelled at its end."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


_CONTEXTS = (
    _catalog_ctx,
    _store_ctx,
    _gate_ctx,
    _meter_ctx,
    _ledger_ctx,
    _session_ctx,
    _services_ctx,
    _webhooks_ctx,
    _exports_ctx,
    _sweeper_ctx,
    _watcher_ctx,
    _retention_ctx,
)
