"""Realtime sessions through taximeter (spec section 4b), with the SDK's
realtime client on both backends: each response charged exactly from its
usage, a budget that runs out ends the session with an error event, a
socket that drops mid-response is charged as reserved."""

from __future__ import annotations

import asyncio
import base64
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from websockets.exceptions import InvalidStatus

from tests.support.fake_upstream import REALTIME, REALTIME_DELTAS, TRANSCRIBE_TOKENS
from tests.support.harness import Harness

M = Decimal(1_000_000)
# gpt-realtime (openai.com/api/pricing): text $4.00 in, $0.40 cached, $16.00
# out; audio $32.00 in, $0.40 cached, $64.00 out, per 1M tokens.
_TEXT_IN = REALTIME["input"] - REALTIME["input_audio"]
_CACHED_TEXT = REALTIME["cached"] - REALTIME["cached_audio"]
RESPONSE_USD = (
    (_TEXT_IN - _CACHED_TEXT) * Decimal("4.00")
    + _CACHED_TEXT * Decimal("0.40")
    + (REALTIME["input_audio"] - REALTIME["cached_audio"]) * Decimal("32.00")
    + REALTIME["cached_audio"] * Decimal("0.40")
    + (REALTIME["output"] - REALTIME["output_audio"]) * Decimal("16.00")
    + REALTIME["output_audio"] * Decimal("64.00")
) / M


async def one_response(conn: Any) -> list[str]:
    """Ask for a response and read the session's events to its end."""
    await conn.response.create()
    seen = []
    async for event in conn:
        seen.append(event.type)
        if event.type in ("response.done", "error"):
            return seen
    return seen


async def test_each_response_is_charged_exactly(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="50")
    async with proxy.sdk(key).realtime.connect(model="gpt-realtime") as conn:
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
        )
        for _ in range(2):
            seen = await one_response(conn)
            assert seen.count("response.output_audio.delta") == REALTIME_DELTAS  # every frame relayed
    events = await proxy.events("acme")
    assert len(events) == 2
    for event in events:
        assert (event["api_type"], event["endpoint"], event["model"]) == (
            "realtime",
            "/v1/realtime",
            "gpt-realtime",
        )
        assert Decimal(event["cost_usd"]) == RESPONSE_USD and not event["estimated"]
        assert (event["input_tokens"], event["output_tokens"], event["cached_tokens"]) == (
            REALTIME["input"],
            REALTIME["output"],
            REALTIME["cached"],
        )
    assert Decimal((await proxy.status("acme"))["cost_used"]) == sum(Decimal(e["cost"]) for e in events)
    # What the client sent reached the upstream, and its key never did.
    assert [e["type"] for e in proxy.upstream.realtime_sent].count("response.create") == 2
    [dialled] = [r for r in proxy.upstream.received if r.path == "/v1/realtime"]
    assert key not in str(dialled.headers)


async def test_a_budget_that_runs_out_ends_the_session(proxy: Harness) -> None:
    # A response costs $0.06328 (R$ 0.3164 at 5): with R$ 0.50, the second one
    # is still admitted (the first left room), the third is not.
    key = await proxy.new_client("acme", mode="cost", cost_limit="0.50")
    async with proxy.sdk(key).realtime.connect(model="gpt-realtime") as conn:
        assert (await one_response(conn))[-1] == "response.done"
        assert (await one_response(conn))[-1] == "response.done"
        await conn.response.create()
        events = [event async for event in conn]  # until the proxy closes the socket
    assert [e.type for e in events] == ["error"]
    assert events[0].error.code == "budget_exceeded"  # type: ignore[attr-defined]
    assert [e["type"] for e in proxy.upstream.realtime_sent].count("response.create") == 2  # never sent
    assert len(await proxy.events("acme")) == 2


async def test_a_socket_dropped_mid_response_is_charged_as_reserved(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="50")
    proxy.upstream.realtime_hold = asyncio.Event()
    try:
        async with proxy.sdk(key).realtime.connect(model="gpt-realtime") as conn:
            await conn.response.create()
            async for event in conn:
                if event.type == "response.output_audio.delta":
                    break  # the client goes away mid-response
        [event] = await proxy.events_once_recorded("acme")
    finally:
        proxy.upstream.realtime_hold.set()
    assert (event["status"], event["estimated"]) == (499, True)
    # As reserved: the output allowance (4096 tokens) as audio at $64 per 1M, at least.
    assert Decimal(event["cost_usd"]) >= 4096 * Decimal("64") / M


async def test_a_spent_client_is_refused_before_the_upstream_is_dialled(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=1)
    await proxy.admin("POST", "/admin/budgets/acme/pause")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(
                f"{proxy.url}/v1/realtime?model=gpt-realtime", headers={"Authorization": f"Bearer {key}"}
            )
    assert caught.value.status == 429
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(f"{proxy.url}/v1/realtime?model=gpt-realtime")
    assert caught.value.status == 401
    with pytest.raises(InvalidStatus) as refused:  # an unpriced model: as for any call, 400
        async with proxy.sdk(key).realtime.connect(model="no-such-model") as conn:
            await conn.response.create()
    assert refused.value.response.status_code == 400
    assert [r for r in proxy.upstream.received if r.path == "/v1/realtime"] == []


async def test_a_response_the_server_starts_by_itself_is_charged_too(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="50")
    async with proxy.sdk(key).realtime.connect(model="gpt-realtime") as conn:
        await conn.input_audio_buffer.append(audio=base64.b64encode(b"\x00" * 48_000).decode())  # 1 s
        await conn.input_audio_buffer.commit()  # the server answers the turn itself
        async for event in conn:
            if event.type == "response.done":
                break
    [event] = await proxy.events("acme")
    assert Decimal(event["cost_usd"]) == RESPONSE_USD and not event["estimated"]


async def test_a_response_the_upstream_rejects_is_not_charged(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="50")
    async with proxy.sdk(key).realtime.connect(model="gpt-realtime") as conn:
        await conn.response.create(response={"instructions": "REJECT"})
        async for event in conn:
            if event.type == "error":
                assert event.error.code == "conversation_already_has_active_response"  # type: ignore[attr-defined]
                break
        assert (await one_response(conn))[-1] == "response.done"
    [event] = await proxy.events("acme")  # the rejected one held nothing after its error
    assert Decimal(event["cost_usd"]) == RESPONSE_USD and not event["estimated"]


async def transcribed_by(conn: Any, model: str) -> None:
    """Ask the session to transcribe the user's audio with ``model``."""
    transcription = {"model": model}
    await conn.session.update(
        session={"type": "realtime", "audio": {"input": {"transcription": transcription}}}
    )


async def test_the_users_audio_transcribed_in_a_session_is_charged_too(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="50")
    async with proxy.sdk(key).realtime.connect(model="gpt-realtime") as conn:
        await transcribed_by(conn, "gpt-4o-transcribe")
        await conn.input_audio_buffer.append(audio=base64.b64encode(b"\x00" * 48_000).decode())
        await conn.input_audio_buffer.commit()
        async for event in conn:
            if event.type == "response.done":
                break
    events = {e["api_type"]: e for e in await proxy.events("acme")}
    assert set(events) == {"realtime", "whisper"}
    # gpt-4o-transcribe: audio in $6.00, text out $10.00 per 1M tokens.
    expected = (
        TRANSCRIBE_TOKENS["audio"] * Decimal("6.00") + TRANSCRIBE_TOKENS["output"] * Decimal("10.00")
    ) / M
    assert Decimal(events["whisper"]["cost_usd"]) == expected
    assert events["whisper"]["model"] == "gpt-4o-transcribe"


async def test_a_transcription_model_without_a_price_is_refused(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="50")
    async with proxy.sdk(key).realtime.connect(model="gpt-realtime") as conn:
        await transcribed_by(conn, "no-such-transcriber")
        async for event in conn:
            if event.type == "session.created":
                continue
            assert event.type == "error"
            assert event.error.code == "model_not_priced"  # type: ignore[attr-defined]
            break
    assert [e["type"] for e in proxy.upstream.realtime_sent] == []  # never sent upstream
