"""The proxied ``/v1/*`` endpoints: parse, admit, forward, meter, respond.

A handler only wires the steps: the relays (``relay.py``) stream bodies
through chunk by chunk (SSE event by event) and settle each call
(``settling.py``) before the response's final byte is sent; usage extraction
and charging are pure and live in :mod:`taximeter.pricing`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from taximeter.pricing.estimate import estimate_usage
from taximeter.pricing.extract import has_image_part
from taximeter.pricing.models import ApiKey, Reservation, UsageEvent
from taximeter.proxy.errors import (
    EndpointNotMetered,
    InvalidInput,
    NotFoundError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from taximeter.proxy.gateway import auth
from taximeter.proxy.gateway.audio import audio_seconds
from taximeter.proxy.gateway.background import settle_before_delete
from taximeter.proxy.gateway.batches import create_batch, show_batch
from taximeter.proxy.gateway.bodies import json_object, read_body
from taximeter.proxy.gateway.conversations import add_to_conversation, create_conversation
from taximeter.proxy.gateway.edge import label, refuse_unmetered_options
from taximeter.proxy.gateway.endpoints import DEFAULT_MODELS, Endpoint, find_endpoint
from taximeter.proxy.gateway.exchange import check_model_allowed
from taximeter.proxy.gateway.files import (
    complete_upload,
    create_upload,
    list_files,
    list_owned,
    streamed,
    upload_file,
    upstream_failure,
)
from taximeter.proxy.gateway.forms import parse_form
from taximeter.proxy.gateway.objects import ObjectRoute, object_route, referenced
from taximeter.proxy.gateway.ownership import check_references, checked_body, owned_route
from taximeter.proxy.gateway.paths import canonical_path, upstream_path
from taximeter.proxy.gateway.realtime import handle_realtime
from taximeter.proxy.gateway.relay import (
    Relay,
    relay_audio,
    relay_events,
    relay_whole,
    wants_injected_usage,
)
from taximeter.proxy.gateway.settling import Call, event_of, record_failure, record_lost, settle_unaccounted
from taximeter.proxy.gateway.upstreams import Upstream
from taximeter.proxy.gateway.vector_stores import (
    STORE_REFERENCES,
    create_vector_store,
    delete_vector_store,
    list_vector_stores,
    show_vector_store,
)
from taximeter.proxy.middleware import REQUEST_ID
from taximeter.proxy.services import SERVICES, Services

__all__ = ["handle_proxy"]

# Request headers passed upstream; everything else (the client's key, cookies,
# hop-by-hop headers) stays here.
_FORWARD_REQUEST = ("content-type", "accept", "openai-beta", "user-agent")
_OFF_LOOP_BYTES = 256 * 1024  # bodies larger than this are parsed and estimated in a thread


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    # Matched on the path as sent: a decoded or normalised path could name another.
    path = canonical_path(request.raw_path)
    route = None if path is None else object_route(request.method, path)
    if route is not None and path is not None:
        return await _object_call(request, services, path, route)
    collection = _COLLECTIONS.get((request.method, path or ""))
    if collection is not None:
        return await collection(request, services)
    endpoint = (
        None if path is None else find_endpoint(request.method, path, services.settings.passthrough_paths)
    )
    if endpoint is None:
        raise EndpointNotMetered(
            "this method and path are not a metered endpoint (paths must be plain: no dot segments "
            "or escaped slashes); taximeter forwards only what it can meter, and an operator may "
            "list pass-through paths"
        )
    key = await auth.authenticate(request, services.keys)
    body = await read_body(request, services.settings.max_body_bytes)
    if not endpoint.metered:
        return await _pass_through(request, services, endpoint, body)
    with services.metrics.refusals(key.client_id):
        if endpoint.body == "multipart":  # the costly parse waits for the cheap refusal
            await services.meter.precheck(key.client_id, request[REQUEST_ID])
        call = await _parse_call(request, endpoint, key, body, services)
        off_loop = len(body) > _OFF_LOOP_BYTES  # a large body is walked in a thread
        find = functools.partial(referenced, endpoint.family, call.fields)
        named = await asyncio.to_thread(find) if off_loop else find()
        await check_references(services.objects, key.client_id, named)
        call.estimate = await _estimate(services, call, off_loop=off_loop)
        call.reservation = services.meter.reservation(call.estimate, key.terms)
        await _admit(services, call.reservation)
    try:
        return await services.shielded(_forward(request, services, call, body))
    except asyncio.CancelledError:
        call.abandon()  # the relay still settles what was delivered
        raise


async def _list_batches(request: web.Request, services: Services) -> web.StreamResponse:
    return await list_owned(request, services, "batch", lambda shown: True)


# Collections of objects a client keeps upstream: made, listed or opened here.
_COLLECTIONS: dict[tuple[str, str], Callable[[web.Request, Services], Awaitable[web.StreamResponse]]] = {
    ("POST", "/v1/files"): upload_file,
    ("GET", "/v1/files"): list_files,
    ("POST", "/v1/uploads"): create_upload,
    ("POST", "/v1/batches"): create_batch,
    ("GET", "/v1/batches"): _list_batches,
    ("POST", "/v1/conversations"): create_conversation,
    ("GET", "/v1/realtime"): handle_realtime,
    ("POST", "/v1/vector_stores"): create_vector_store,
    ("GET", "/v1/vector_stores"): list_vector_stores,
}


async def _estimate(services: Services, call: Call, *, off_loop: bool) -> UsageEvent:
    """The call as it would be charged before its usage is known: reserved at
    admission, and recorded as is if its process dies before it settles. The
    estimate walks the whole request: a large one is walked in a thread."""
    if call.endpoint.family == "transcription" and call.form is not None and "file" in call.form.files:
        filename, data = call.form.files["file"]
        call.upload_seconds = await asyncio.to_thread(audio_seconds, data, filename=filename)
    settings = services.settings
    estimate = functools.partial(
        estimate_usage,
        call.endpoint.family,
        call.fields,
        default_output_tokens=settings.reserve_output_tokens,
        default_audio_seconds=settings.reserve_audio_seconds,
        unseen_input_tokens=settings.reserve_input_tokens,
        upload_seconds=call.upload_seconds,
    )
    usage = await asyncio.to_thread(estimate) if off_loop else estimate()
    call.reserved = replace(usage, estimated=True)
    return event_of(services, call, call.reserved, 0)


async def _admit(services: Services, reservation: Reservation) -> None:
    """Admit the call, or raise. A client that leaves while admission is under
    way leaves no reservation behind for the sweeper to charge."""
    try:
        await services.meter.admit(reservation)
    except asyncio.CancelledError:
        await services.shielded(services.meter.release(reservation.client_id, reservation.request_id))
        raise


async def _forward(request: web.Request, services: Services, call: Call, body: bytes) -> web.StreamResponse:
    call.upstream_started = time.monotonic()
    try:
        return await _forward_and_relay(request, services, call, body)
    finally:
        if not call.settled:
            await settle_unaccounted(services, call)
        upstream_s = (call.upstream_ended or time.monotonic()) - call.upstream_started
        services.metrics.upstream_seconds.observe(upstream_s)
        services.metrics.overhead_seconds.observe(max(time.monotonic() - call.started - upstream_s, 0.0))


async def _forward_and_relay(
    request: web.Request, services: Services, call: Call, body: bytes
) -> web.StreamResponse:
    upstream = call.upstream = await _send(request, services, call.endpoint, call, _upstream_body(call, body))
    try:
        content_type = upstream.headers.get("Content-Type", "")
        if upstream.status < 400 and content_type.startswith("text/event-stream"):
            return await relay_events(request, services, call, upstream)
        if upstream.status < 400 and call.endpoint.family == "speech":
            return await relay_audio(request, services, call, upstream)
        return await relay_whole(request, services, call, upstream)
    finally:
        upstream.release()


async def _parse_call(
    request: web.Request, endpoint: Endpoint, key: ApiKey, body: bytes, services: Services
) -> Call:
    form = None
    if endpoint.body == "json":
        fields = await _parse_json(body)
    else:
        content_type = request.headers.get("Content-Type", "")
        try:
            form = await asyncio.to_thread(parse_form, content_type, body)
        except ValueError as exc:
            raise InvalidInput(f"expected a multipart/form-data body: {exc}", status=400) from exc
        fields = dict(form.fields)
    refuse_unmetered_options(endpoint.family, fields, form=form is not None)
    model = label(fields.get("model") or DEFAULT_MODELS.get(endpoint.path), "model", required=True)
    assert model is not None  # required
    check_model_allowed(model, key.terms)
    vision = endpoint.family in ("chat", "responses") and has_image_part(fields)
    header_user = request.headers.get("X-Taximeter-End-User")
    upstream = services.router.pick(model)
    return Call(
        request_id=request[REQUEST_ID],
        client_id=key.client_id,
        endpoint=endpoint,
        api_type="vision" if vision else endpoint.api_type,
        model=model,
        fields=fields,
        form=form,
        price=services.meter.resolve_price(model, endpoint.family != "moderation", upstream.provider),
        end_user=label(header_user, "X-Taximeter-End-User") or label(fields.get("user"), "user"),
        conversation=label(request.headers.get("X-Taximeter-Conversation"), "X-Taximeter-Conversation"),
        route=upstream,
        tariff=await services.meter.rates.tariff(key.terms),
    )


async def _parse_json(body: bytes) -> dict[str, Any]:
    if len(body) <= _OFF_LOOP_BYTES:
        return json_object(body)
    return await asyncio.to_thread(json_object, body)


def _upstream_body(call: Call, body: bytes) -> bytes:
    if not wants_injected_usage(call):
        return body  # forwarded byte for byte
    options = call.fields.get("stream_options")
    rewritten = dict(call.fields)
    rewritten["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(rewritten)


async def _send(
    request: web.Request,
    services: Services,
    endpoint: Endpoint,
    call: Call | None,
    body: bytes | AsyncIterator[bytes],
    route: Upstream | None = None,
) -> aiohttp.ClientResponse:
    """Send the call upstream (the call's route, else ``route``, else the
    first). The URL is built from the matched endpoint's canonical path,
    never from the client's text."""
    upstream = call.route if call is not None else route or services.router.pick(None)
    headers = {k: v for k in _FORWARD_REQUEST if (v := request.headers.get(k)) is not None}
    headers.update(upstream.credentials())
    _, _, query = request.raw_path.partition("?")
    try:
        return await services.session.request(
            request.method,
            upstream.url(upstream_path(endpoint.path), query),
            data=body if body else None,
            headers=headers,
        )
    except aiohttp.ClientConnectorError as exc:  # never reached the upstream: nothing was spent
        if call is not None:
            await record_failure(services, call, 502)
        raise UpstreamUnavailable(f"upstream {upstream.name} is unreachable: {type(exc).__name__}") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        if call is not None:  # sent, and maybe run: charged as reserved
            await record_lost(services, call, 504)
        raise UpstreamTimeout(f"upstream {upstream.name} did not answer in time") from exc
    except aiohttp.ClientError as exc:
        if call is not None:
            await record_lost(services, call, 502)
        raise upstream_failure(exc, upstream) from exc


async def _object_call(
    request: web.Request, services: Services, path: str, route: ObjectRoute
) -> web.StreamResponse:
    """A call on one stored object (retrieve, list its items, cancel, delete):
    free and unmetered, forwarded to the upstream that holds it only when the
    object is the caller's own, else 404 as if it did not exist."""
    key = await auth.authenticate(request, services.keys)
    owned = await owned_route(services.objects, key.client_id, route)  # before its body is read
    upstream = services.router.named(owned.upstream)
    if upstream is None:  # its upstream is no longer configured: nothing to ask
        raise NotFoundError(f"the upstream that holds {route.object_id!r} is no longer configured")
    if route.kind == "upload" and path.endswith("/complete"):
        return await complete_upload(request, services, owned, upstream)
    if route.kind == "batch":
        return await show_batch(request, services, owned, upstream, path)
    if route.kind == "response" and request.method == "DELETE" and route.itself:
        await settle_before_delete(services, route.object_id)
    if route.kind == "conversation" and request.method == "POST":
        return await add_to_conversation(request, services, owned, upstream, path)
    itself = route.itself  # the object, not an item of it
    if route.kind == "vector_store" and itself and request.method == "GET":
        return await show_vector_store(request, services, owned, upstream)
    if route.kind == "vector_store" and itself and request.method == "DELETE":
        return await delete_vector_store(request, services, owned, upstream)
    endpoint = Endpoint(path, "passthrough", "none", "raw", method=request.method, metered=False)
    body: bytes | AsyncIterator[bytes]
    if route.kind == "upload" and path.endswith("/parts"):  # up to 64 MB a part: streamed through
        body = streamed(request, services.settings.max_file_bytes)
    elif route.kind == "vector_store" and request.method == "POST":  # the files it adds: the caller's
        # Adding files adds storage: not for a client that may not spend.
        if path.endswith(("/files", "/file_batches")):
            await services.meter.precheck(key.client_id, request[REQUEST_ID])
        body = await checked_body(request, services, key.client_id, most=STORE_REFERENCES)
    else:
        body = await read_body(request, services.settings.max_body_bytes)
    response = await _pass_through(request, services, endpoint, body, upstream)
    if request.method == "DELETE" and response.status < 300 and itself:
        await services.objects.forget_object(route.object_id)
    return response


async def _pass_through(
    request: web.Request,
    services: Services,
    endpoint: Endpoint,
    body: bytes | AsyncIterator[bytes],
    route: Upstream | None = None,
) -> web.StreamResponse:
    """Unmetered paths (model listing, operator-listed pass-throughs, a stored
    object's own), relayed as-is."""
    upstream = await _send(request, services, endpoint, None, body, route)
    try:
        relay = await Relay.start(request, upstream)
        async for chunk in relay.chunks():
            await relay.write(chunk)
        return await relay.finish()
    finally:
        upstream.release()
