"""Status endpoints: a tenant's own budget, liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from taximeter.proxy.errors import NotFoundError
from taximeter.proxy.gateway import auth
from taximeter.proxy.metrics import CONTENT_TYPE_LATEST
from taximeter.proxy.services import GATE, OPERATIONS, SERVICES, STORE
from taximeter.store.base import StoreUnavailable
from taximeter.store.migrations import LATEST

__all__ = ["status_routes"]


async def budget_status(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    key = await auth.authenticate(request, services.keys)
    ops = request.app[OPERATIONS]
    try:
        state = await ops.budget(key.client_id)
    except NotFoundError:  # metered, never blocked: what it spent this month
        return web.json_response(await ops.unbudgeted_status(key.client_id))
    return web.json_response(await ops.status_json(state))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    store, gate = request.config_dict[STORE], request.config_dict[GATE]
    checks: dict[str, str] = {}
    for name, ping in (("store", store.ping), ("gate", gate.ping)):
        try:
            await ping()
            checks[name] = "ok"
        except StoreUnavailable:
            checks[name] = "unavailable"
    if checks["store"] == "ok":
        try:
            version = await store.schema_version()
            checks["migrations"] = "ok" if version >= LATEST else f"behind ({version} of {LATEST})"
        except StoreUnavailable:
            checks["migrations"] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503
    )


async def metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    token = services.settings.metrics_token
    if token is not None:
        auth.require_bearer(request, token.get_secret_value(), "/metrics needs the metrics token")
    services.metrics.ledger_pending.set(services.meter.ledger.pending)
    return web.Response(body=services.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def status_routes() -> list[web.RouteDef]:
    return [
        web.get("/metrics", metrics),
        web.get("/budget/status", budget_status),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
    ]
