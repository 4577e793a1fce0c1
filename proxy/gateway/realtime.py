"""The Realtime API over WebSocket (spec section 4b): ``GET /v1/realtime``
proxied both ways, frame by frame.

The client is admitted at connect (a paused or spent client is refused before
the upstream is dialled). Every response the session makes - one a client's
``response.create`` asks for, or one the server starts by itself (voice
activity) - holds a reservation while it runs: asked for by the client, it
is admitted before the event goes upstream; started by the server, when its
``response.created`` arrives. Each ``response.done`` is charged from its
usage (text, audio and cached tokens at their own prices, api_type
``realtime``). When the budget or a limit refuses a response, the client
gets an ``error`` event (code ``budget_exceeded``) and the socket is closed
once no response of it runs any more. A socket that ends while a response
runs charges that response as reserved, flagged ``estimated``; one whose
process dies is charged so by the sweeper of any process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp import web

from taximeter.pricing.catalog import ModelPrice
from taximeter.pricing.charge import CallFacts, Tariff, charge
from taximeter.pricing.extract import parse_usage
from taximeter.pricing.models import ApiKey, Reservation
from taximeter.pricing.usage import Usage
from taximeter.proxy.errors import (
    BudgetExceeded,
    InvalidInput,
    LimitReached,
    ModelNotAllowed,
    ModelNotPriced,
    TaximeterError,
    UpstreamUnavailable,
)
from taximeter.proxy.gateway import auth
from taximeter.proxy.gateway.edge import label
from taximeter.proxy.gateway.exchange import check_model_allowed
from taximeter.proxy.gateway.settling import CLIENT_CLOSED, charged
from taximeter.proxy.gateway.upstreams import Upstream
from taximeter.proxy.middleware import REQUEST_ID
from taximeter.proxy.services import Services

__all__ = ["handle_realtime"]

log = logging.getLogger("taximeter.proxy")

ENDPOINT = "/v1/realtime"
# Audio a client appends is pcm16 at 24 kHz, base64: about 10 tokens a second
# (https://platform.openai.com/docs/guides/realtime-costs), so about one
# token per 6,400 base64 characters; a text item, one per 4 characters.
_B64_CHARS_PER_AUDIO_TOKEN = 6_400
_CHARS_PER_TOKEN = 4
_HEADERS = ("openai-beta", "user-agent")  # passed upstream; the client's key never is
_CLOSE_S = 2.0  # longest wait for a socket's closing handshake
_MAX_ASKED = 4  # responses a client may have asked for and not yet seen start


async def handle_realtime(request: web.Request, services: Services) -> web.StreamResponse:
    """``GET /v1/realtime?model=...``: a WebSocket session, metered per response."""
    key = await auth.authenticate(request, services.keys)
    meter = services.meter
    model = label(request.query.get("model"), "model", required=True)
    assert model is not None  # required
    check_model_allowed(model, key.terms)
    upstream = services.router.pick(model)
    price = meter.resolve_price(model, True, upstream.provider)
    end_user = label(request.headers.get("X-Taximeter-End-User"), "X-Taximeter-End-User")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise InvalidInput(
            "/v1/realtime is a WebSocket: connect with an Upgrade: websocket request", status=400
        )
    await meter.precheck(key.client_id, request[REQUEST_ID])  # a paused or spent client is refused now
    session = _Session(
        services=services,
        key=key,
        model=model,
        price=price,
        upstream=upstream,
        tariff=await meter.rates.tariff(key.terms),
        request_id=request[REQUEST_ID],
        end_user=end_user,
    )
    up = await _dial(services, request, upstream, model)
    ws = web.WebSocketResponse(max_msg_size=services.settings.max_body_bytes, timeout=_CLOSE_S)
    try:
        await ws.prepare(request)
        # Ended by either side, or by shutdown (which closes every session first).
        closing = functools.partial(_close, ws, up)
        services.sessions.add(closing)
        try:
            await services.shielded(session.run(ws, up))
        finally:
            services.sessions.discard(closing)
    finally:
        await up.close()
    return ws


async def _close(ws: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
    """Shutdown: both sockets closed; what ran is charged as the session ends."""
    await up.close()
    await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutting down")


async def _dial(
    services: Services, request: web.Request, upstream: Upstream, model: str
) -> aiohttp.ClientWebSocketResponse:
    headers = {k: v for k in _HEADERS if (v := request.headers.get(k)) is not None}
    headers.update(upstream.credentials())
    try:
        return await services.session.ws_connect(
            upstream.url(ENDPOINT, urlencode({"model": model})),  # the model checked and priced, only
            headers=headers,
            max_msg_size=services.settings.max_response_bytes,
            timeout=aiohttp.ClientWSTimeout(ws_close=_CLOSE_S),
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamUnavailable(
            f"upstream {upstream.name} refused the Realtime session ({exc.status})"
        ) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"upstream {upstream.name} is unreachable: {type(exc).__name__}") from exc


@dataclass
class _Session:
    services: Services
    key: ApiKey
    model: str
    price: ModelPrice | None
    upstream: Upstream
    tariff: Tariff
    request_id: str
    end_user: str | None
    # response.create sent, not yet started, by the event id it went with
    # (the upstream names it in the error event of one it rejects).
    asked: dict[str, Reservation] = field(default_factory=dict)
    running: dict[str, Reservation] = field(default_factory=dict)  # by response id
    closing: bool = False  # refused once: closed when no response runs
    responses: int = 0
    context_tokens: int = 0  # what the conversation holds so far (an estimate, until a response tells)
    max_output: int | None = None  # the session's max_output_tokens
    transcriber: str | None = (
        None  # the model that transcribes the user's audio, when the session asks for one
    )
    transcriptions: int = 0

    async def run(self, ws: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
        pumps = [
            asyncio.create_task(self._from_client(ws, up), name="taximeter-realtime-in"),
            asyncio.create_task(self._from_upstream(ws, up), name="taximeter-realtime-out"),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await up.close()
            await ws.close()
            await self._charge_unfinished()

    # -- client to upstream ----------------------------------------------------------

    async def _from_client(self, ws: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
        async for text, event in _texts(ws, up):
            kind = event.get("type")
            if kind == "response.create":
                sent = await self._ask(ws, event)
                if sent is None:
                    continue  # refused: never sent upstream
                await up.send_str(sent)
                continue
            if kind == "session.update":
                refused = self._unmetered_setup(event)
                if refused is not None:  # never sent upstream: its transcriptions could not be charged
                    await _refusal(ws, refused.message, refused.code)
                    continue
            self._note(kind, event)
            await up.send_str(text)

    def _unmetered_setup(self, event: dict[str, Any]) -> TaximeterError | None:
        """Why a session.update cannot be metered: a transcription model the
        client may not use, or that has no price (as for any call)."""
        session = event.get("session")
        model = _transcriber(session, None) if isinstance(session, dict) else None
        if model is None:
            return None
        try:
            check_model_allowed(model, self.key.terms)
            self.services.meter.resolve_price(model, True, self.upstream.provider)
        except (ModelNotAllowed, ModelNotPriced) as exc:
            return exc
        return None

    def _note(self, kind: Any, event: dict[str, Any]) -> None:
        """What a client event adds to the conversation (for the next estimate)."""
        if kind == "input_audio_buffer.append" and isinstance(event.get("audio"), str):
            self.context_tokens += len(event["audio"]) // _B64_CHARS_PER_AUDIO_TOKEN
        elif kind == "conversation.item.create":
            self.context_tokens += _item_tokens(event.get("item"))
        elif kind == "session.update" and isinstance(event.get("session"), dict):
            session = event["session"]
            self.context_tokens += len(str(session.get("instructions") or "")) // _CHARS_PER_TOKEN
            self.max_output = _max_output(session, self.max_output)
            self.transcriber = _transcriber(session, self.transcriber)

    async def _ask(self, ws: web.WebSocketResponse, event: dict[str, Any]) -> str | None:
        """Reserve a response the client asks for: the event to send upstream
        (with an event id, so a rejection names it), or None (the client told,
        the socket closing) when its budget or a limit refuses it."""
        if self.closing:
            await _refusal(ws, "this session's budget is spent: no response is started")
            return None
        if len(self.asked) >= _MAX_ASKED:
            await _refusal(
                ws, f"at most {_MAX_ASKED} responses may be asked for before one starts", "too_many"
            )
            return None
        asked = event.get("response")
        max_output = _max_output(asked, self.max_output) if isinstance(asked, dict) else self.max_output
        try:
            reservation = await self._reserve(max_output, admitted=True)
        except (BudgetExceeded, LimitReached) as exc:
            self.services.metrics.rejection(self.key.client_id, exc.reason)
            self.closing = True
            await _refusal(ws, exc.message)
            if not self.running and not self.asked:
                await ws.close()
            return None
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or not event_id or event_id in self.asked:
            event_id = event["event_id"] = f"event_{reservation.request_id}"
        self.asked[event_id] = reservation
        return orjson.dumps(event).decode()

    # -- upstream to client ----------------------------------------------------------

    async def _from_upstream(self, ws: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
        async for text, event in _texts(up, ws):
            kind = event.get("type")
            response = event.get("response")
            response_id = response.get("id") if isinstance(response, dict) else None
            if kind == "response.created" and isinstance(response_id, str):
                await self._started(ws, response_id)
            elif kind == "error":
                await self._rejected(event.get("error"))
            elif kind == "conversation.item.input_audio_transcription.completed":
                # The user's audio, transcribed by a model of its own: charged as it is done.
                await self.services.shielded(self._transcribed(event.get("usage")))
            elif kind == "response.done" and isinstance(response, dict):
                # Charged before the client hears of it (its next call sees the
                # usage), whatever happens to this socket meanwhile.
                await self.services.shielded(self._done(response_id, response))
            await ws.send_str(text)
            if kind == "response.done" and self.closing and not self.running and not self.asked:
                return  # the response that ran when it was refused has ended: close

    async def _started(self, ws: web.WebSocketResponse, response_id: str) -> None:
        if self.asked:
            self.running[response_id] = self.asked.pop(next(iter(self.asked)))  # the oldest asked
            return
        # Started by the server itself (voice activity): reserved now; a refusal
        # cannot stop it upstream, so it runs, is charged, and the session ends.
        try:
            self.running[response_id] = await self._reserve(self.max_output, admitted=True)
        except (BudgetExceeded, LimitReached) as exc:
            self.services.metrics.rejection(self.key.client_id, exc.reason)
            self.closing = True
            await _refusal(ws, exc.message)
            self.running[response_id] = await self._reserve(self.max_output, admitted=False)

    async def _rejected(self, error: Any) -> None:
        """The upstream refused a client event: if it was a response.create,
        no response comes of it, and its reservation goes."""
        event_id = error.get("event_id") if isinstance(error, dict) else None
        reservation = self.asked.pop(event_id, None) if isinstance(event_id, str) else None
        if reservation is not None:
            await self.services.meter.release(reservation.client_id, reservation.request_id)

    async def _done(self, response_id: Any, response: dict[str, Any]) -> None:
        reservation = self.running.pop(response_id, None) if isinstance(response_id, str) else None
        if reservation is None:
            if not self.asked:
                log.warning("realtime_response_unknown", extra={"request_id": self.request_id})
                reservation = await self._reserve(self.max_output, admitted=False)
            else:
                reservation = self.asked.pop(next(iter(self.asked)))
        reported = parse_usage(response.get("usage"))
        usage = reported if reported is not None else Usage(estimated=True)
        status = 200 if response.get("status") in ("completed", "incomplete", None) else CLIENT_CLOSED
        if not usage.estimated:
            self.context_tokens = usage.input_tokens + usage.output_tokens
        await self._settle(reservation, usage, status)

    # -- money -----------------------------------------------------------------------

    def _facts(self, request_id: str, reserved: Usage) -> CallFacts:
        return CallFacts(
            request_id=request_id,
            client_id=self.key.client_id,
            api_type="realtime",
            model=self.model,
            endpoint=ENDPOINT,
            family="chat",
            price=self.price,
            end_user=self.end_user,
            reserved=reserved,
            upstream=self.upstream.name,
            regional=self.upstream.regional,
        )

    async def _reserve(self, max_output: int | None, *, admitted: bool) -> Reservation:
        """A reservation for the session's next response: the conversation so
        far in (as audio, the dearest), ``max_output`` (or the default) out as
        audio. ``admitted``: held only if the budget and limits admit it, else
        raised; not: held without asking (a response that runs regardless)."""
        meter = self.services.meter
        settings = self.services.settings
        self.responses += 1
        out = max_output or settings.reserve_output_tokens
        estimate = Usage(
            input_tokens=self.context_tokens,
            audio_input_tokens=self.context_tokens,
            output_tokens=out,
            audio_output_tokens=out,
            estimated=True,
        )
        request_id = f"{self.request_id}:{self.responses}"
        event = charge(self._facts(request_id, estimate), estimate, 0, self.tariff, meter.clock())
        self.services.keys.listen()  # a pause or a limit set elsewhere decides this response too
        reservation = meter.reservation(event, self.key.terms)
        try:
            if admitted:
                await meter.admit(reservation)
            else:
                await meter.hold_unchecked(reservation)
        except asyncio.CancelledError:  # the session ended meanwhile: nothing of it stays held
            await self.services.shielded(meter.release(reservation.client_id, reservation.request_id))
            raise
        return reservation

    async def _settle(self, reservation: Reservation, usage: Usage, status: int) -> None:
        meter = self.services.meter
        reserved = Usage(
            input_tokens=reservation.event.input_tokens,
            audio_input_tokens=reservation.event.input_tokens,
            output_tokens=reservation.event.output_tokens,
            audio_output_tokens=reservation.event.output_tokens,
            estimated=True,
        )
        facts = self._facts(reservation.request_id, reserved)
        await charged(self.services, charge(facts, usage, status, self.tariff, meter.clock()))

    async def _transcribed(self, reported: Any) -> None:
        usage = parse_usage(reported)
        if usage is None:  # none reported: the whisper-1 of old Realtime sessions bills by the second
            return
        meter = self.services.meter
        self.transcriptions += 1
        model = self.transcriber or "unknown"
        facts = replace(
            self._facts(f"{self.request_id}:t{self.transcriptions}", Usage()),
            api_type="whisper",
            model=model,
            family="transcription",
            price=meter.catalog.resolve(model, self.upstream.provider),
        )
        await charged(self.services, charge(facts, usage, 200, self.tariff, meter.clock()))

    async def _charge_unfinished(self) -> None:
        """The socket ended: responses that ran (or were asked for and may
        have) are charged as reserved, flagged estimated."""
        unfinished = list(self.running.values()) + list(self.asked.values())
        self.running.clear()
        self.asked.clear()
        for reservation in unfinished:
            event = replace(
                reservation.event,
                status=CLIENT_CLOSED,
                estimated=True,
                created_at=self.services.meter.clock(),
            )
            log.warning(
                "realtime_response_cut", extra={"request_id": event.request_id, "client": event.client_id}
            )
            with contextlib.suppress(Exception):
                await charged(self.services, event)


def _item_tokens(item: Any) -> int:
    """An estimate of what a conversation item adds: its audio parts as audio,
    everything else as text."""
    if not isinstance(item, dict):
        return 0
    audio = 0
    parts = item.get("content")
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, dict) and isinstance(part.get("audio"), str):
            audio += len(part["audio"])
    text = len(orjson.dumps(item)) - audio
    return audio // _B64_CHARS_PER_AUDIO_TOKEN + text // _CHARS_PER_TOKEN


async def _texts(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The text frames ``source`` sends, each with the event it holds; its
    binary frames go to ``sink`` as they are. Ends when ``source`` closes."""
    async for msg in source:
        if msg.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
            continue
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        yield msg.data, _event(msg.data)


def _event(data: str) -> dict[str, Any]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return event if isinstance(event, dict) else {}


def _transcriber(session: dict[str, Any], default: str | None) -> str | None:
    """The transcription model a session.update sets (GA or beta shape)."""
    audio = session.get("audio")
    found = audio.get("input") if isinstance(audio, dict) else None
    found = (
        found.get("transcription") if isinstance(found, dict) else session.get("input_audio_transcription")
    )
    model = found.get("model") if isinstance(found, dict) else None
    if isinstance(model, str) and 0 < len(model) <= 256 and model.isprintable():
        return model
    return default


def _max_output(settings: Any, default: int | None) -> int | None:
    """The output cap a session or response sets (GA or beta name); "inf": none."""
    if not isinstance(settings, dict):
        return default
    for name in ("max_output_tokens", "max_response_output_tokens"):
        value = settings.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if value == "inf":
            return None
    return default


async def _refusal(ws: web.WebSocketResponse, message: str, code: str = "budget_exceeded") -> None:
    """An ``error`` event as the Realtime API sends them."""
    error = {
        "type": "insufficient_quota" if code == "budget_exceeded" else "invalid_request_error",
        "code": code,
        "message": message,
        "param": None,
        "event_id": None,
    }
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(
            orjson.dumps({"type": "error", "event_id": "event_taximeter", "error": error}).decode()
        )
