"""The admin API (``/admin/*``): clients, keys, budgets, usage, pricing.

A sub-app of its own (:func:`admin_app`): its middlewares check the admin
token once for every route but the OpenAPI document, and render every error
of its routes, aiohttp's own included (no route, a wrong method, a body too
large), in the spec's JSON shape. Services come from the root app's keys,
through ``request.config_dict``.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from taximeter.pricing.models import UsageEvent
from taximeter.pricing.times import rfc3339
from taximeter.proxy.admin import limits, money, portal
from taximeter.proxy.admin.http import json_body as _body
from taximeter.proxy.admin.http import json_response as _json
from taximeter.proxy.admin.http import operations as _ops
from taximeter.proxy.admin.openapi import document
from taximeter.proxy.api_shapes import (
    EVENT_FIELDS,
    client_json,
    event_json,
    key_json,
    report_row_json,
)
from taximeter.proxy.errors import InvalidInput, NotFoundError
from taximeter.proxy.gateway.auth import require_admin
from taximeter.proxy.middleware import REQUEST_ID, json_error_middleware
from taximeter.proxy.operations import MAX_EVENTS
from taximeter.proxy.services import SERVICES, SETTINGS

__all__ = ["admin_app"]

log = logging.getLogger("taximeter.admin")

# What a spreadsheet would run as a formula (OWASP, "CSV injection"), and what
# stays a number: a decimal string such as a cost is left as it is.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def _csv_cell(value: Any) -> Any:
    """A value as a CSV cell a spreadsheet shows and never evaluates: text
    that starts like a formula gets a leading ``'``; numbers are left alone."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


async def list_clients(request: web.Request) -> web.Response:
    clients = await _ops(request).clients()
    currency = _ops(request).currency
    return _json({"data": [client_json(c, currency) for c in clients]})


async def create_client(request: web.Request) -> web.Response:
    ops = _ops(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object with id and name", status=400)
    client = await ops.create_client(body.get("id"), body.get("name"))
    return _json(client_json(client, ops.currency), status=201)


async def create_key(request: web.Request) -> web.Response:
    secret, key = await _ops(request).create_key(request.match_info["client_id"])
    return _json({**key_json(key), "key": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    ops = _ops(request)
    client = await ops.client(request.match_info["client_id"])
    return _json({"data": [key_json(k) for k in await ops.keys(client.id)]})


async def revoke_key(request: web.Request) -> web.Response:
    key = await _ops(request).revoke_key(request.match_info["prefix"])
    return _json(key_json(key))


async def list_budgets(request: web.Request) -> web.Response:
    return _json({"data": await _ops(request).statuses_json()})


async def get_budget(request: web.Request) -> web.Response:
    ops = _ops(request)
    return _json(await ops.status_json(await ops.budget(request.match_info["client_id"])))


async def put_budget(request: web.Request) -> web.Response:
    ops = _ops(request)
    state = await ops.put_budget(request.match_info["client_id"], await _body(request))
    return _json(await ops.status_json(state))


async def delete_budget(request: web.Request) -> web.Response:
    await _ops(request).delete_budget(request.match_info["client_id"])
    return web.Response(status=204)


async def change_budget(request: web.Request) -> web.Response:
    ops = _ops(request)
    state = await ops.change_budget(request.match_info["client_id"], request.match_info["action"])
    return _json(await ops.status_json(state))


async def usage(request: web.Request) -> web.Response:
    ops = _ops(request)
    q = request.query
    group_by = q.get("group_by", "api_type")
    start, end, rows = await ops.usage_report(
        q.get("client_id") or None, q.get("from"), q.get("to"), group_by
    )
    return _json(
        {
            "group_by": group_by,
            "from": rfc3339(start),
            "to": rfc3339(end),
            "currency": await ops.report_currency(q.get("client_id") or None, rows),
            "data": [report_row_json(r) for r in rows],
        }
    )


async def usage_events(request: web.Request) -> web.StreamResponse:
    """A page of events as JSON (``limit``, ``cursor``: the last page's
    ``next``), or every matching event as CSV, streamed a page at a time."""
    ops = _ops(request)
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
    except ValueError as exc:
        raise InvalidInput("limit must be an integer", param="limit") from exc
    if not 1 <= limit <= MAX_EVENTS:
        raise InvalidInput(f"limit must be between 1 and {MAX_EVENTS}", param="limit")
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidInput("format must be json or csv", param="format")
    client_id = q.get("client_id") or None
    if fmt == "json":
        events, cursor = await ops.events_page(client_id, limit, q.get("cursor") or None)
        return _json({"data": [event_json(e) for e in events], "next": cursor})
    pages = ops.all_events(client_id)
    first: list[UsageEvent] = await anext(pages, [])  # a store that is down answers 503 before the 200 starts
    headers = {"Content-Type": "text/csv; charset=utf-8", "X-Taximeter-Request-Id": request[REQUEST_ID]}
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    try:
        await response.write(_csv_rows(first, header=True))
        async for events in pages:
            await response.write(_csv_rows(events))
    except ConnectionError:  # the client left: nothing more to send
        return response
    except Exception:
        # Too late for an error answer: the download is cut short (the client
        # sees a truncated body, never a CSV that looks complete).
        log.exception("csv_export_failed", extra={"request_id": request[REQUEST_ID]})
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def _csv_rows(events: list[UsageEvent], *, header: bool = False) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EVENT_FIELDS, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows({k: _csv_cell(v) for k, v in event_json(e).items()} for e in events)
    return out.getvalue().encode()


async def list_pricing(request: web.Request) -> web.Response:
    """The catalog of one provider (``?provider=``), or of every provider an
    upstream is priced by."""
    catalog = request.config_dict[SERVICES].meter.catalog  # the prices in force today
    wanted = request.query.get("provider")
    providers = {wanted} if wanted else {u.provider for u in request.config_dict[SERVICES].router.all()}
    prices = sorted((p for p in catalog if p.provider in providers), key=lambda p: (p.provider, p.model))
    return _json({"data": [p.as_json() for p in prices]})


async def get_pricing(request: web.Request) -> web.Response:
    """What a name resolves to at an upstream's provider (``?upstream=NAME``;
    by default the upstream that serves the model)."""
    model = request.match_info["model"]
    router = request.config_dict[SERVICES].router
    name = request.query.get("upstream")
    upstream = router.pick(model) if name is None else router.named(name)
    if upstream is None:
        raise NotFoundError(f"no upstream named {name!r}", param="upstream")
    price = request.config_dict[SERVICES].meter.catalog.resolve(model, upstream.provider)
    if price is None:
        raise NotFoundError(f"no {upstream.provider} price for model {model!r}", param="model")
    return _json({**price.as_json(), "requested": model, "upstream": upstream.name})


async def openapi_document(request: web.Request) -> web.Response:
    return _json(document())  # describes the API, holds no data: served without a token


# Served without a token: they describe the API and hold no data.
_PUBLIC: frozenset[Handler] = frozenset({openapi_document})


@web.middleware
async def admin_token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin token, checked before any route of the API runs. A request no
    route takes (an unknown path, a wrong method) gets its 404 or 405 as is."""
    if request.match_info.http_exception is None and request.match_info.handler not in _PUBLIC:
        token = request.config_dict[SETTINGS].admin_token
        require_admin(request, token.get_secret_value() if token else None)
    return await handler(request)


def admin_app() -> web.Application:
    """The admin API as a sub-app, to be mounted at ``/admin``."""
    app = web.Application(middlewares=[json_error_middleware, admin_token_middleware])
    app.add_routes(
        [
            web.get("/openapi.json", openapi_document),
            web.get("/clients", list_clients),
            web.post("/clients", create_client),
            web.post("/clients/{client_id}/keys", create_key),
            web.get("/clients/{client_id}/keys", list_keys),
            web.delete("/keys/{prefix}", revoke_key),
            web.get("/budgets", list_budgets),
            web.get("/budgets/{client_id}", get_budget),
            web.put("/budgets/{client_id}", put_budget),
            web.delete("/budgets/{client_id}", delete_budget),
            web.post("/budgets/{client_id}/{action:reset|pause|resume}", change_budget),
            web.get("/usage", usage),
            web.get("/usage/events", usage_events),
            web.get("/pricing", list_pricing),
            web.get("/pricing/{model}", get_pricing),
            *money.ROUTES,
            *limits.ROUTES,
            *portal.ROUTES,
        ]
    )
    return app
