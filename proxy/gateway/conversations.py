"""Conversations (spec section 4b): made through taximeter, each is its
maker's, and so are the items added to it; every file or item their items
name must be the caller's own. Free: a conversation's tokens are charged
when a response uses it."""

from __future__ import annotations

from aiohttp import web

from taximeter.pricing.models import OwnedObject
from taximeter.proxy.gateway import auth
from taximeter.proxy.gateway.files import upstream_json
from taximeter.proxy.gateway.objects import valid_id
from taximeter.proxy.gateway.ownership import checked_body, record_created
from taximeter.proxy.gateway.upstreams import Upstream
from taximeter.proxy.middleware import REQUEST_ID
from taximeter.proxy.services import Services

__all__ = ["add_to_conversation", "create_conversation"]


async def create_conversation(request: web.Request, services: Services) -> web.StreamResponse:
    """``POST /v1/conversations``: the conversation (and its first items) the caller's."""
    key = await auth.authenticate(request, services.keys)
    body = await checked_body(request, services, key.client_id)
    upstream = services.router.pick(None)
    status, data, relayed, reply = await upstream_json(
        services, request, upstream, "POST", "/v1/conversations", body
    )
    if status < 300 and isinstance(reply, dict) and valid_id(reply.get("id")):
        now = services.meter.clock()
        owned = [OwnedObject(str(reply["id"]), "conversation", key.client_id, upstream.name, now)]
        await record_created(services.objects, owned, request[REQUEST_ID])
    return web.Response(body=data, status=status, headers=relayed)


async def add_to_conversation(
    request: web.Request, services: Services, conversation: OwnedObject, upstream: Upstream, path: str
) -> web.StreamResponse:
    """``POST /v1/conversations/{id}`` (its metadata) and ``.../items`` of the
    caller's conversation: what the body names checked first; the items it
    adds become the caller's."""
    body = await checked_body(request, services, conversation.client_id)
    status, data, relayed, reply = await upstream_json(services, request, upstream, "POST", path, body)
    if status < 300 and isinstance(reply, dict) and isinstance(reply.get("data"), list):
        now = services.meter.clock()
        owned = [
            OwnedObject(str(item["id"]), "item", conversation.client_id, upstream.name, now)
            for item in reply["data"]
            if isinstance(item, dict) and valid_id(item.get("id"))
        ]
        await record_created(services.objects, owned, request[REQUEST_ID])
    return web.Response(body=data, status=status, headers=relayed)
