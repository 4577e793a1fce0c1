"""JSON in and out for the admin API's handlers."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from taximeter.proxy.errors import InvalidJson
from taximeter.proxy.operations import Operations
from taximeter.proxy.services import OPERATIONS

__all__ = ["json_body", "json_response", "operations"]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def json_body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc}") from exc


def operations(request: web.Request) -> Operations:
    """What an operator can do, as the handlers of the admin API reach it."""
    return request.config_dict[OPERATIONS]
