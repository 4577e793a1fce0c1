"""Relaying an upstream's answer to the client while metering it: a whole
body, an SSE stream event by event, or TTS audio chunk by chunk. Each relay
settles the call before the answer's last byte reaches the client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
from aiohttp import web

from taximeter.pricing.extract import extract_usage
from taximeter.pricing.sse import SseMessage, SseSplitter
from taximeter.pricing.stream_usage import StreamUsage
from taximeter.pricing.usage import Usage
from taximeter.proxy.errors import UpstreamUnavailable
from taximeter.proxy.gateway.audio import audio_seconds
from taximeter.proxy.gateway.background import is_background, watch_background
from taximeter.proxy.gateway.bodies import (
    TooLarge,
    json_or_none,
    read_bounded,
    response_headers,
)
from taximeter.proxy.gateway.objects import created
from taximeter.proxy.gateway.settling import CLIENT_CLOSED, Call, record_failure, record_lost, settle
from taximeter.proxy.middleware import REQUEST_ID
from taximeter.proxy.services import Services

__all__ = [
    "Relay",
    "relay_audio",
    "relay_events",
    "relay_whole",
    "wants_injected_usage",
]

log = logging.getLogger("taximeter.proxy")

MAX_AUDIO_CAPTURE = 64 * 1024 * 1024


def wants_injected_usage(call: Call) -> bool:
    """A streamed chat call whose client did not ask for the usage chunk."""
    if call.endpoint.family not in ("chat", "completions") or call.fields.get("stream") is not True:
        return False
    options = call.fields.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_usage") is True)


async def relay_whole(
    request: web.Request, services: Services, call: Call, upstream: aiohttp.ClientResponse
) -> web.Response:
    try:
        data = await read_bounded(upstream, services.settings.max_response_bytes)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The upstream had answered: a success may have been charged there.
        status = CLIENT_CLOSED if call.client_gone.is_set() else 502
        record = record_lost if upstream.status < 400 else record_failure
        await record(services, call, status)
        raise UpstreamUnavailable(f"upstream connection failed mid-response: {type(exc).__name__}") from exc
    except TooLarge as exc:
        upstream.close()
        await record_lost(services, call, 502)
        raise UpstreamUnavailable(
            f"upstream response is larger than max_response_bytes ({services.settings.max_response_bytes})"
        ) from exc
    parsed = json_or_none(data, upstream.headers.get("Content-Type", ""))
    if upstream.status >= 400:
        # The upstream refused the call: free, unless its body reports usage.
        reported = extract_usage("chat", call.fields, parsed)
        usage = Usage() if reported.estimated else reported
    elif is_background(call, upstream.status, parsed):  # charged once it has run, by a watcher
        await watch_background(services, call, parsed)
        return web.Response(
            body=data, status=upstream.status, headers=response_headers(upstream, call.request_id)
        )
    else:
        usage = extract_usage(call.endpoint.family, call.fields, parsed, file_seconds=call.upload_seconds)
        call.created = created(call.endpoint.family, call.fields, parsed)
    await settle(services, call, usage, upstream.status)
    return web.Response(
        body=data, status=upstream.status, headers=response_headers(upstream, call.request_id)
    )


async def relay_events(
    request: web.Request, services: Services, call: Call, upstream: aiohttp.ClientResponse
) -> web.StreamResponse:
    relay = await Relay.start(request, upstream, call.client_gone)
    usage = StreamUsage(call.endpoint.family, call.fields, hide_usage_chunk=wants_injected_usage(call))
    splitter = SseSplitter()
    async for chunk in relay.chunks():
        await relay.write(await _follow_messages(services, call, usage, splitter.feed(chunk), relay.status))
    await relay.write(await _follow_messages(services, call, usage, splitter.end(), relay.status))
    await relay.write(splitter.rest())
    if not call.settled:
        await _settle_stream(services, call, usage, relay.status)
    return await relay.finish()


async def _settle_stream(services: Services, call: Call, usage: StreamUsage, status: int) -> None:
    """Settle a stream at what it used, with the objects it made."""
    call.created = created(call.endpoint.family, call.fields, usage.made())
    await settle(services, call, usage.final_usage(), status)


async def _follow_messages(
    services: Services, call: Call, usage: StreamUsage, messages: list[SseMessage], status: int
) -> bytes:
    """The bytes of ``messages`` to forward. The call is settled at its final
    usage, before that (and the end of the stream) reaches the client; a
    running count in earlier messages is not final."""
    out = []
    for message in messages:
        forward = usage.on_message(message)
        if usage.finished and not call.settled:
            await _settle_stream(services, call, usage, status)
        if forward:
            out.append(message.raw)
    return b"".join(out)


async def relay_audio(
    request: web.Request, services: Services, call: Call, upstream: aiohttp.ClientResponse
) -> web.StreamResponse:
    # Characters price tts-1; a token-priced model's raw audio has no usage,
    # so its own length is measured instead.
    measure = call.price is not None and call.price.per_million_characters is None
    captured: list[bytes] = []
    size = 0
    relay = await Relay.start(request, upstream, call.client_gone)
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
    await settle(services, call, usage, relay.status)
    return await relay.finish()


class Relay:
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
    ) -> Relay:
        """Send the upstream's status and headers, and relay its body from here."""
        response = web.StreamResponse(
            status=upstream.status, headers=response_headers(upstream, request[REQUEST_ID])
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
