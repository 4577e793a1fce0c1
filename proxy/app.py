"""The aiohttp application: wiring, routes and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from taximeter.pricing.catalog import load_catalog
from taximeter.pricing.models import BudgetState, UsageEvent
from taximeter.proxy.admin.admin import admin_routes
from taximeter.proxy.context import OPERATIONS, SERVICES, Services
from taximeter.proxy.dashboard.dashboard import DASHBOARD, Dashboard, dashboard_routes
from taximeter.proxy.dashboard.formatting import Formatter, locale_for
from taximeter.proxy.dashboard.pages import load_pages
from taximeter.proxy.dashboard.sessions import Sessions
from taximeter.proxy.gateway.auth import KeyCache
from taximeter.proxy.gateway.metering import Clock, Meter, system_clock
from taximeter.proxy.gateway.proxying import handle_proxy
from taximeter.proxy.gateway.routing import UpstreamRouter
from taximeter.proxy.gateway.status import status_routes
from taximeter.proxy.logs import protect_logs
from taximeter.proxy.metrics import Metrics
from taximeter.proxy.middleware import error_middleware
from taximeter.proxy.operations import Operations
from taximeter.proxy.settings import Settings
from taximeter.proxy.webhooks import Webhook, WebhookSender
from taximeter.store.base import RecordResult, StoreUnavailable
from taximeter.store.factory import open_gate, open_store
from taximeter.store.ledger import LedgerWriter
from taximeter.store.store_gate import StoreGate

__all__ = ["create_app"]


def create_app(settings: Settings, *, clock: Clock = system_clock) -> web.Application:
    """The proxy as an aiohttp app; backends open on start-up, close on clean-up."""
    # Here, not only in `serve`: any server that runs this app (tests too) keeps
    # keys out of aiohttp's error logs and drops connections that stall.
    protect_logs(_secrets(settings))
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=settings.max_body_bytes,
        handler_args=_connection_limits(settings),
    )
    app.add_routes(status_routes())
    app.add_routes(admin_routes())
    app.add_routes(dashboard_routes())
    app.router.add_route("*", "/v1/{tail:.*}", handle_proxy)
    app.cleanup_ctx.append(_lifecycle(settings, clock))
    return app


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
    found += [webhook.secret for webhook in settings.webhooks]
    return [secret.get_secret_value() for secret in found if secret is not None]


def _lifecycle(settings: Settings, clock: Clock):  # type: ignore[no-untyped-def]
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        catalog = await asyncio.to_thread(load_catalog, *settings.pricing_files)
        pages = await asyncio.to_thread(load_pages)
        store = await open_store(settings.database_url)
        await store.migrate()
        gate = open_gate(settings.redis_url, prefix=settings.redis_prefix, refresh_s=settings.gate_refresh_s)
        metrics = Metrics(catalog)
        store.observe(metrics.budget_event)

        async def recorded(event: UsageEvent, result: RecordResult) -> None:
            metrics.ledger_pending.set(ledger.pending)
            meter.recorded(event, result.recorded)
            if result.state is not None:
                metrics.budget(result.state)

        def quarantined(event: UsageEvent, error: str) -> None:
            # Refused by the store and set aside: counted as written, in no budget.
            metrics.ledger_quarantined.inc()
            metrics.ledger_pending.set(ledger.pending)
            # Done with, as far as the gate is concerned: it forgets its copy of the
            # event, or a sweep would hand the same refused event back to the ledger.
            meter.recorded(event, False)

        ledger = LedgerWriter(
            store,
            max_pending=settings.ledger_max_pending,
            on_recorded=recorded,
            on_quarantined=quarantined,
            clock=clock,
        )
        ledger.start()
        meter = Meter(
            store=store,
            gate=gate,
            ledger=ledger,
            catalog=catalog,
            currency=settings.currency,
            exchange_rate=settings.exchange_rate,
            allow_unpriced=settings.unpriced_models == "allow",
            # A live call ends within the upstream timeout; only a dead process's outlives this.
            reservation_ttl_s=settings.upstream_timeout_s + settings.reservation_grace_s,
            record_grace_s=settings.reservation_grace_s,
            # Redis down: admit under the budget's row lock rather than let spend through.
            fallback=StoreGate(store) if settings.redis_url else None,
            clock=clock,
        )

        async def refresh_gate(client_id: str, state: BudgetState | None, now: datetime) -> None:
            # Re-read after the flush, so the copy includes this process's in-flight events.
            if state is not None:
                metrics.budget(state)
            try:
                await meter.rebuild(client_id, now)
            except StoreUnavailable:
                meter.mark_stale(client_id)  # the store has the change; the gate catches up later

        timeout = aiohttp.ClientTimeout(
            total=settings.upstream_timeout_s, sock_connect=settings.upstream_connect_timeout_s
        )
        # One pooled session for every upstream call; no per-host connection cap.
        session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        webhooks = WebhookSender(
            store,
            session,
            [Webhook(w.url, w.secret.get_secret_value()) for w in settings.webhooks if w.secret],
            clock=clock,
            timeout_s=settings.webhook_timeout_s,
            retry_max_s=settings.webhook_retry_max_s,
        )
        services = Services(
            settings=settings,
            meter=meter,
            router=UpstreamRouter(settings.resolved_upstreams()),
            session=session,
            webhooks=webhooks,
            metrics=metrics,
            keys=KeyCache(store, ttl_s=settings.key_cache_s),
        )
        app[SERVICES] = services
        operations = Operations(
            store,
            timezone=settings.timezone,
            currency=settings.currency,
            clock=clock,
            on_budget_change=refresh_gate,
            flush_ledger=ledger.flush,
            on_key_revoked=services.keys.forget,
        )
        app[OPERATIONS] = operations
        admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None
        app[DASHBOARD] = Dashboard(
            pages=pages,
            sessions=None
            if admin_token is None
            else Sessions(store, admin_token, lifetime_s=settings.dashboard_session_s, clock=clock),
            ops=operations,
            fmt=await asyncio.to_thread(Formatter, locale_for(settings.currency, settings.locale)),
        )
        background = [
            asyncio.create_task(meter.sweep_forever(settings.sweep_interval_s), name="taximeter-sweeper"),
            asyncio.create_task(webhooks.run_forever(settings.sweep_interval_s), name="taximeter-webhooks"),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await services.drain()  # calls still relaying are finished and metered first
            await session.close()
            await ledger.close(timeout_s=settings.ledger_drain_s)  # a store still down cannot hold up exit
            await meter.close()  # the gate hears of the last events recorded before it closes
            await gate.close()
            await store.close()

    return lifecycle
