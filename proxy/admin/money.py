"""The admin API's money terms (spec section 6c): a client's currency,
markup and allowed models, exchange rates with their history, and credits."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from taximeter.proxy.admin.http import json_body as _body
from taximeter.proxy.admin.http import json_response as _json
from taximeter.proxy.admin.http import operations as _ops
from taximeter.proxy.api_shapes import budget_json, client_json, credit_json, rate_json

__all__ = ["ROUTES"]


async def get_client(request: web.Request) -> web.Response:
    ops = _ops(request)
    return _json(client_json(await ops.client(request.match_info["client_id"]), ops.currency))


async def patch_client(request: web.Request) -> web.Response:
    ops = _ops(request)
    client = await ops.update_client(request.match_info["client_id"], await _body(request))
    return _json(client_json(client, ops.currency))


async def list_rates(request: web.Request) -> web.Response:
    """Every rate set, newest first by currency; ``current`` holds the one in force of each."""
    ops = _ops(request)
    history = await ops.rates(request.query.get("currency") or None)
    current: dict[str, Any] = {}
    for rate in history:
        current.setdefault(rate.currency, rate_json(rate))
    return _json({"current": current, "data": [rate_json(r) for r in history]})


async def put_rate(request: web.Request) -> web.Response:
    rate = await _ops(request).set_rate(request.match_info["currency"], await _body(request))
    return _json(rate_json(rate))


async def list_credits(request: web.Request) -> web.Response:
    credits = await _ops(request).credits(request.match_info["client_id"])
    return _json({"data": [credit_json(c) for c in credits]})


async def add_credit(request: web.Request) -> web.Response:
    ops = _ops(request)
    credit, state = await ops.add_credit(request.match_info["client_id"], await _body(request))
    spend = await ops.spend_by_api_type(state.client_id, state.period_start)
    return _json({**credit_json(credit), "budget": budget_json(state, spend)}, status=201)


ROUTES = [
    web.get("/clients/{client_id}", get_client),
    web.patch("/clients/{client_id}", patch_client),
    web.get("/rates", list_rates),
    web.put("/rates/{currency}", put_rate),
    web.get("/budgets/{client_id}/credits", list_credits),
    web.post("/budgets/{client_id}/credits", add_credit),
]
