"""JSON in and out for the admin API's handlers."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from taximeter.proxy.errors import InvalidJson

__all__ = ["json_body", "json_response"]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def json_body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc}") from exc
