"""The proxied ``/v1/*`` endpoints: parse, admit, forward, meter, respond.

A handler only wires the steps; usage extraction and pricing are pure and
live elsewhere. Bodies stream through chunk by chunk (SSE event by event);
usage is settled with the gate before the response's final byte is sent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from taximeter.pricing.catalog import ModelPrice
from taximeter.pricing.charge import CallFacts, charge
from taximeter.pricing.estimate import estimate_usage
from taximeter.pricing.extract import StreamMeter, extract_usage, has_image_part
from taximeter.pricing.models import UsageEvent
from taximeter.pricing.money import money_text
from taximeter.pricing.sse import SseEvent, SseSplitter
from taximeter.pricing.usage import Usage
from taximeter.proxy.errors import (
    BudgetExceeded,
    EndpointNotMetered,
    InvalidInput,
    InvalidJson,
    ModelNotPriced,
    RequestTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from taximeter.proxy.gateway import auth
from taximeter.proxy.gateway.audio import audio_seconds
from taximeter.proxy.gateway.edge import label, refuse_unmetered_options
from taximeter.proxy.gateway.endpoints import DEFAULT_MODELS, Endpoint, find_endpoint
from taximeter.proxy.gateway.forms import Form, parse_form
from taximeter.proxy.gateway.paths import canonical_path, upstream_path
from taximeter.proxy.middleware import REQUEST_ID
from taximeter.proxy.services import SERVICES, Services

__all__ = ["handle_proxy"]

log = logging.getLogger("taximeter.proxy")

# Request headers passed upstream; everything else (the client's key, cookies,
# hop-by-hop headers) stays here.
_FORWARD_REQUEST = ("content-type", "accept", "openai-beta", "user-agent")
_DROP_RESPONSE = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "set-cookie",
    # The operator's account, not the tenant's business.
    "openai-organization",
    "openai-project",
}
CLIENT_CLOSED = 499  # recorded status of a call whose client went away mid-stream
MAX_AUDIO_CAPTURE = 64 * 1024 * 1024
_OFF_LOOP_BYTES = 256 * 1024  # bodies larger than this are parsed and estimated in a thread


@dataclass
class Call:
    """One proxied call as it moves through the steps."""

    request_id: str
    client_id: str
    endpoint: Endpoint
    api_type: str
    model: str
    fields: dict[str, Any]
    form: Form | None
    price: ModelPrice | None
    end_user: str | None
    conversation: str | None
    started: float = field(default_factory=time.monotonic)
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    upstream: aiohttp.ClientResponse | None = None
    estimate: UsageEvent | None = None  # what was reserved; charged if the call ends unaccounted
    reserved: Usage = field(default_factory=Usage)  # what estimate prices: the floor of a lost count
    upload_seconds: Decimal | None = None  # length of an uploaded audio file, read once
    settled: bool = False
    upstream_started: float = 0.0
    upstream_ended: float | None = None  # when its body was read to the end

    def abandon(self) -> None:
        """The client left: stop the upstream call (and its spend) now."""
        self.client_gone.set()
        if self.upstream is not None:
            self.upstream.close()


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    # Matched on the path as sent: a decoded or normalised path could name another.
    path = canonical_path(request.raw_path)
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
    body = await _read_body(request, services.settings.max_body_bytes)
    if not endpoint.metered:
        return await _pass_through(request, services, endpoint, body)
    try:
        if endpoint.body == "multipart":  # the costly parse waits for the cheap refusal
            await services.meter.precheck(key.client_id, request[REQUEST_ID])
        call = await _parse_call(request, endpoint, key.client_id, body, services)
        call.estimate = await _estimate(services, call, off_loop=len(body) > _OFF_LOOP_BYTES)
        await _admit(services, call.estimate)
    except (BudgetExceeded, ModelNotPriced) as exc:
        reason = exc.reason if isinstance(exc, BudgetExceeded) else exc.code
        services.metrics.rejection(key.client_id, reason)
        raise
    try:
        return await services.shielded(_forward(request, services, call, body))
    except asyncio.CancelledError:
        call.abandon()  # the relay still settles what was delivered
        raise


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
    return _event(services, call, call.reserved, 0)


async def _admit(services: Services, estimate: UsageEvent) -> None:
    """Admit the call, or raise. A client that leaves while admission is under
    way leaves no reservation behind for the sweeper to charge."""
    try:
        await services.meter.admit(services.meter.reservation(estimate))
    except asyncio.CancelledError:
        await services.shielded(services.meter.release(estimate.client_id, estimate.request_id))
        raise


async def _forward(request: web.Request, services: Services, call: Call, body: bytes) -> web.StreamResponse:
    call.upstream_started = time.monotonic()
    try:
        return await _forward_and_relay(request, services, call, body)
    finally:
        if not call.settled:
            await _unaccounted(services, call)
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
            return await _relay_events(request, services, call, upstream)
        if upstream.status < 400 and call.endpoint.family == "speech":
            return await _relay_audio(request, services, call, upstream)
        return await _relay_whole(request, services, call, upstream)
    finally:
        upstream.release()


async def _read_body(request: web.Request, limit: int) -> bytes:
    try:
        if request.content_length is not None and request.content_length > limit:
            raise _TooLarge
        return await _read_at_most(request.content, limit)
    except _TooLarge as exc:
        raise RequestTooLarge(f"request body is larger than the {limit}-byte limit") from exc


async def _parse_call(
    request: web.Request, endpoint: Endpoint, client_id: str, body: bytes, services: Services
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
    vision = endpoint.family in ("chat", "responses") and has_image_part(fields)
    header_user = request.headers.get("X-Taximeter-End-User")
    return Call(
        request_id=request[REQUEST_ID],
        client_id=client_id,
        endpoint=endpoint,
        api_type="vision" if vision else endpoint.api_type,
        model=model,
        fields=fields,
        form=form,
        price=services.meter.resolve_price(model, endpoint.family != "moderation"),
        end_user=label(header_user, "X-Taximeter-End-User") or label(fields.get("user"), "user"),
        conversation=label(request.headers.get("X-Taximeter-Conversation"), "X-Taximeter-Conversation"),
    )


async def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        fields = (
            orjson.loads(body)
            if len(body) <= _OFF_LOOP_BYTES
            else await asyncio.to_thread(orjson.loads, body)
        )
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise InvalidJson("request body must be a JSON object")
    return fields


def _wants_injected_usage(call: Call) -> bool:
    """A streamed chat call whose client did not ask for the usage chunk."""
    if call.endpoint.family not in ("chat", "completions") or call.fields.get("stream") is not True:
        return False
    options = call.fields.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_usage") is True)


def _upstream_body(call: Call, body: bytes) -> bytes:
    if not _wants_injected_usage(call):
        return body  # forwarded byte for byte
    options = call.fields.get("stream_options")
    rewritten = dict(call.fields)
    rewritten["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(rewritten)


async def _send(
    request: web.Request, services: Services, endpoint: Endpoint, call: Call | None, body: bytes
) -> aiohttp.ClientResponse:
    """Send the call upstream. The URL is built from the matched endpoint's
    canonical path, never from the client's text."""
    upstream = services.router.pick(call.model if call else None)
    headers = {k: v for k in _FORWARD_REQUEST if (v := request.headers.get(k)) is not None}
    if upstream.authorization:
        headers["Authorization"] = upstream.authorization
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
            await _record_failure(services, call, 502)
        raise UpstreamUnavailable(f"upstream {upstream.name} is unreachable: {type(exc).__name__}") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        if call is not None:  # sent, and maybe run: charged as reserved
            await _record_lost(services, call, 504)
        raise UpstreamTimeout(f"upstream {upstream.name} did not answer in time") from exc
    except aiohttp.ClientError as exc:
        if call is not None:
            await _record_lost(services, call, 502)
        raise UpstreamUnavailable(f"upstream {upstream.name} failed: {type(exc).__name__}") from exc


def _response_headers(upstream: aiohttp.ClientResponse, request_id: str) -> dict[str, str]:
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE}
    headers["X-Taximeter-Request-Id"] = request_id
    return headers


async def _relay_whole(
    request: web.Request, services: Services, call: Call, upstream: aiohttp.ClientResponse
) -> web.Response:
    try:
        data = await _read_bounded(upstream, services.settings.max_response_bytes)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The upstream had answered: a success may have been charged there.
        status = CLIENT_CLOSED if call.client_gone.is_set() else 502
        record = _record_lost if upstream.status < 400 else _record_failure
        await record(services, call, status)
        raise UpstreamUnavailable(f"upstream connection failed mid-response: {type(exc).__name__}") from exc
    except _TooLarge as exc:
        upstream.close()
        await _record_lost(services, call, 502)
        raise UpstreamUnavailable(
            f"upstream response is larger than max_response_bytes ({services.settings.max_response_bytes})"
        ) from exc
    parsed = _json_or_none(data, upstream.headers.get("Content-Type", ""))
    if upstream.status >= 400:
        # The upstream refused the call: free, unless its body reports usage.
        reported = extract_usage("chat", call.fields, parsed)
        usage = Usage() if reported.estimated else reported
    else:
        usage = extract_usage(call.endpoint.family, call.fields, parsed, file_seconds=call.upload_seconds)
    await _settle(services, call, usage, upstream.status)
    return web.Response(
        body=data, status=upstream.status, headers=_response_headers(upstream, call.request_id)
    )


async def _relay_events(
    request: web.Request, services: Services, call: Call, upstream: aiohttp.ClientResponse
) -> web.StreamResponse:
    relay = await _Relay.start(request, upstream, call.client_gone)
    meter = StreamMeter(call.endpoint.family, call.fields, hide_usage_chunk=_wants_injected_usage(call))
    splitter = SseSplitter()
    async for chunk in relay.chunks():
        await relay.write(await _meter_events(services, call, meter, splitter.feed(chunk), relay.status))
    await relay.write(await _meter_events(services, call, meter, splitter.end(), relay.status))
    await relay.write(splitter.rest())
    if not call.settled:
        await _settle(services, call, meter.final_usage(), relay.status)
    return await relay.finish()


async def _meter_events(
    services: Services, call: Call, meter: StreamMeter, events: list[SseEvent], status: int
) -> bytes:
    """The bytes of ``events`` to forward. The call is settled at its final
    usage, before that (and the end of the stream) reaches the client; a
    running count in earlier events is not final."""
    out = []
    for event in events:
        forward = meter.on_event(event)
        if meter.finished and not call.settled:
            await _settle(services, call, meter.final_usage(), status)
        if forward:
            out.append(event.raw)
    return b"".join(out)


async def _relay_audio(
    request: web.Request, services: Services, call: Call, upstream: aiohttp.ClientResponse
) -> web.StreamResponse:
    # Characters price tts-1; a token-priced model's raw audio has no usage,
    # so its own length is measured instead.
    measure = call.price is not None and call.price.per_million_characters is None
    captured: list[bytes] = []
    size = 0
    relay = await _Relay.start(request, upstream, call.client_gone)
    async for chunk in relay.chunks():
        if measure and size < MAX_AUDIO_CAPTURE:
            captured.append(chunk)
            size += len(chunk)
        await relay.write(chunk)
    seconds = None
    if measure:
        fmt = (
            call.fields.get("response_format")
            if isinstance(call.fields.get("response_format"), str)
            else "mp3"
        )
        seconds = await asyncio.to_thread(
            audio_seconds, b"".join(captured), filename=f"x.{fmt}", response_format=fmt
        )
    # A token-priced reply whose length could not be read comes back estimated.
    usage = extract_usage("speech", call.fields, None, output_seconds=seconds, token_priced=measure)
    if relay.status != upstream.status:
        usage = replace(usage, estimated=True)  # cut off
    await _settle(services, call, usage, relay.status)
    return await relay.finish()


class _Relay:
    """Copies an upstream body to the client, remembering which side broke off:
    ``status`` becomes 502 if the upstream did, CLIENT_CLOSED if the client did
    (a failed write, or ``client_gone`` set when its handler was cancelled)."""

    def __init__(
        self,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        request: web.Request,
        client_gone: asyncio.Event | None = None,
    ) -> None:
        self._request = request
        self._request_id = request[REQUEST_ID]
        self._upstream = upstream
        self._response = response
        self._gone = client_gone if client_gone is not None else asyncio.Event()
        self._status = upstream.status

    @classmethod
    async def start(
        cls, request: web.Request, upstream: aiohttp.ClientResponse, client_gone: asyncio.Event | None = None
    ) -> _Relay:
        """Send the upstream's status and headers, and relay its body from here."""
        response = web.StreamResponse(
            status=upstream.status, headers=_response_headers(upstream, request[REQUEST_ID])
        )
        await response.prepare(request)
        return cls(upstream, response, request, client_gone)

    @property
    def status(self) -> int:
        return CLIENT_CLOSED if self._gone.is_set() else self._status

    async def chunks(self) -> AsyncIterator[bytes]:
        iterator = self._upstream.content.iter_any().__aiter__()
        while self.status != CLIENT_CLOSED:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._broke(502, exc)
                return
            if self.status == CLIENT_CLOSED:
                return
            yield chunk

    async def write(self, data: bytes) -> None:
        if not data or self.status == CLIENT_CLOSED:
            return
        try:
            await self._response.write(data)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            self._broke(CLIENT_CLOSED, exc)

    async def finish(self) -> web.StreamResponse:
        if self.status == CLIENT_CLOSED:
            return self._response
        if self.status == 502 and self._request.transport is not None:
            # The upstream broke off: break the client's connection too, so it
            # sees a failed stream rather than a short one that looks complete.
            self._request.transport.abort()
            return self._response
        try:
            await self._response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client left after the last byte; the call is already recorded
        return self._response

    def _broke(self, status: int, exc: BaseException) -> None:
        if self._gone.is_set():
            return  # the client left first; the upstream closing is our doing
        if status == CLIENT_CLOSED:
            self._gone.set()
        else:
            self._status = status
        side = "client" if status == CLIENT_CLOSED else "upstream"
        log.warning(
            "stream_interrupted",
            extra={"request_id": self._request_id, "side": side, "error": type(exc).__name__},
        )


def _event(services: Services, call: Call, usage: Usage, status: int) -> UsageEvent:
    """The ledger event of ``call``, ended with ``status`` after ``usage``:
    the rules are in :mod:`taximeter.pricing.charge`."""
    facts = CallFacts(
        request_id=call.request_id,
        client_id=call.client_id,
        api_type=call.api_type,
        model=call.model,
        endpoint=call.endpoint.path,
        family=call.endpoint.family,
        price=call.price,
        end_user=call.end_user,
        conversation=call.conversation,
        reserved=call.reserved,
    )
    return charge(facts, usage, status, services.meter.tariff, services.meter.clock())


async def _settle(services: Services, call: Call, usage: Usage, status: int) -> None:
    event = _event(services, call, usage, status)
    call.settled = True
    call.upstream_ended = call.upstream_ended or time.monotonic()
    await services.meter.settle(event)
    services.metrics.call(event)
    log.info(
        "request_metered",
        extra={
            "request_id": call.request_id,
            "client": call.client_id,
            "model": call.model,
            "api_type": call.api_type,
            "status": status,
            "tokens": event.tokens,
            "cost": money_text(event.cost),
            "estimated": event.estimated,
            "latency_ms": round((time.monotonic() - call.started) * 1000, 1),
            "upstream_ms": round((call.upstream_ended - call.upstream_started) * 1000, 1),
            "overhead_ms": round(
                (time.monotonic() - call.started - (call.upstream_ended - call.upstream_started)) * 1000, 1
            ),
        },
    )


async def _unaccounted(services: Services, call: Call) -> None:
    """A call that ended by a path nothing above expected (the client vanished
    as the response started, say). If it reached the upstream, it may have been
    charged there: charge its estimate, flagged. If not, free its reservation."""
    if call.upstream is None or call.estimate is None:
        await services.meter.release(call.client_id, call.request_id)
        return
    call.settled = True
    event = replace(call.estimate, status=CLIENT_CLOSED, estimated=True, created_at=services.meter.clock())
    log.warning("call_unaccounted", extra={"request_id": call.request_id, "client": call.client_id})
    await services.meter.settle(event)
    services.metrics.call(event)


async def _record_failure(services: Services, call: Call, status: int) -> None:
    """A call the upstream refused or never got: recorded at no cost."""
    await _settle(services, call, Usage(), status)


async def _record_lost(services: Services, call: Call, status: int) -> None:
    """A call the upstream may have run, whose usage never came back: charged
    as reserved, flagged ``estimated``."""
    await _settle(services, call, call.reserved, status)  # flagged estimated since _estimate


class _TooLarge(Exception):
    pass


async def _read_bounded(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole upstream body, or _TooLarge once it passes ``limit`` bytes."""
    if upstream.content_length is not None:  # the usual case: one read of a known size
        if upstream.content_length > limit:
            raise _TooLarge
        return await upstream.read()
    return await _read_at_most(upstream.content, limit)


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """A body read in pieces, or _TooLarge once it passes ``limit`` bytes: a
    hostile peer cannot make us hold more."""
    chunks, size = [], 0
    async for chunk in content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _json_or_none(data: bytes, content_type: str) -> Any:
    if "json" not in content_type:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


async def _pass_through(
    request: web.Request, services: Services, endpoint: Endpoint, body: bytes
) -> web.StreamResponse:
    """Unmetered paths (model listing, operator-listed pass-throughs), relayed as-is."""
    upstream = await _send(request, services, endpoint, None, body)
    try:
        relay = await _Relay.start(request, upstream)
        async for chunk in relay.chunks():
            await relay.write(chunk)
        return await relay.finish()
    finally:
        upstream.release()
