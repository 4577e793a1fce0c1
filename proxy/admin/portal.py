"""The admin API's links to the tenant portal (spec section 8): make one,
or revoke them all (the client gets a new portal secret)."""

from __future__ import annotations

from aiohttp import web

from taximeter.pricing.times import rfc3339
from taximeter.proxy.admin.http import json_body as _body
from taximeter.proxy.admin.http import json_response as _json
from taximeter.proxy.admin.http import operations as _ops
from taximeter.proxy.services import public_base

__all__ = ["ROUTES"]


async def create_link(request: web.Request) -> web.Response:
    """``{expires_in_s}`` (optional) -> ``{url, expires_at}``; the URL's base is
    the ``public_url`` setting, else the address this request came to."""
    body = await _body(request) if request.can_read_body else {}
    url, expires_at = await _ops(request).portal_link(
        request.match_info["client_id"], body, public_base(request)
    )
    return _json({"url": url, "expires_at": rfc3339(expires_at)}, status=201)


async def revoke_links(request: web.Request) -> web.Response:
    await _ops(request).revoke_portal_links(request.match_info["client_id"])
    return web.Response(status=204)


ROUTES = [
    web.post("/clients/{client_id}/portal-links", create_link),
    web.delete("/clients/{client_id}/portal-links", revoke_links),
]
