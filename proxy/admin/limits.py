"""The admin API's limits beside the budget (spec section 6b)."""

from __future__ import annotations

from aiohttp import web

from taximeter.proxy.admin.http import json_body, json_response, operations
from taximeter.proxy.gateway.edge import label

__all__ = ["ROUTES"]


async def get_limits(request: web.Request) -> web.Response:
    """Each limit with its use in the current window (``?end_user=`` for the
    limits per end user; the calls without one otherwise)."""
    end_user = label(request.query.get("end_user"), "end_user")
    shown = await operations(request).limits(request.match_info["client_id"], end_user)
    return json_response({"client_id": request.match_info["client_id"], "end_user": end_user, "data": shown})


async def put_limits(request: web.Request) -> web.Response:
    """Replace the client's limits as a set: ``{"limits": [...]}``."""
    client_id = request.match_info["client_id"]
    shown = await operations(request).set_limits(client_id, await json_body(request))
    return json_response({"client_id": client_id, "end_user": None, "data": shown})


ROUTES = [
    web.get("/clients/{client_id}/limits", get_limits),
    web.put("/clients/{client_id}/limits", put_limits),
]
