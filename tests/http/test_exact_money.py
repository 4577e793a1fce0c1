"""Exact money end to end, with the official SDK against a fake upstream that
answers as OpenAI does: the tier the response reports, built-in tool calls,
long context, models that once were priced as their base. Expected costs are
worked out here from the list prices (pricing page, 2026-06-27 copy, checked
2026-11-25), never read from the catalog."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from taximeter.proxy.gateway.sweeper import sweep
from tests.support.clock import FakeClock
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import Harness

M = Decimal(1_000_000)


def usd(amount: Decimal) -> str:
    text = format(amount.quantize(Decimal("0.000000001")).normalize(), "f")
    return text


def replying(body: dict[str, Any]) -> Any:
    async def script(request: web.Request, raw: bytes) -> web.StreamResponse:
        return web.json_response(body)

    return script


def chat_body(model: str, prompt: int, completion: int, tier: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1764000000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    if tier is not None:
        body["service_tier"] = tier
    return body


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        # gpt-5.5: standard $5 / $30, flex $2.50 / $15, priority $12.50 / $75 per 1M.
        ("default", (1_000 * 5 + 100 * 30) / M),
        ("flex", (1_000 * Decimal("2.5") + 100 * 15) / M),
        ("priority", (1_000 * Decimal("12.5") + 100 * 75) / M),
    ],
)
async def test_the_tier_the_response_reports_prices_the_call(
    proxy: Harness, tier: str, expected: Decimal
) -> None:
    """Before: service_tier was never read: flex charged double, priority at 40%."""
    key = await proxy.new_client("acme")
    proxy.upstream.script = replying(chat_body("gpt-5.5", 1_000, 100, tier))
    await proxy.sdk(key).chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "hi"}], service_tier="auto"
    )
    [event] = await proxy.events("acme")
    assert (event["cost_usd"], event["service_tier"]) == (usd(expected), tier)
    assert event["price_source"] == "prices.toml"


async def test_a_long_prompt_is_priced_at_long_context_rates(proxy: Harness) -> None:
    """Before: a 300k-token gpt-5.5 prompt was recorded at half its cost."""
    key = await proxy.new_client("acme")
    proxy.upstream.script = replying(chat_body("gpt-5.5", 300_000, 1_000, "default"))
    await proxy.sdk(key).chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "hi"}]
    )
    [event] = await proxy.events("acme")
    # > 272K input tokens: the whole call at 2 x $5 and 1.5 x $30.
    assert event["cost_usd"] == usd((300_000 * 10 + 1_000 * 45) / M)


async def test_responses_tool_calls_are_charged_per_call(proxy: Harness) -> None:
    """Before: web_search and file_search calls of the Responses API were free."""
    key = await proxy.new_client("acme")
    output = [
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "web_search_call", "id": "ws_2", "status": "completed"},
        {"type": "web_search_call", "id": "ws_3", "status": "completed"},
        {"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": []},
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "ok", "annotations": []}],
        },
    ]
    proxy.upstream.script = replying(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1764000000,
            "model": "gpt-5",
            "status": "completed",
            "service_tier": "default",
            "output": output,
            "usage": {"input_tokens": 2_000, "output_tokens": 300, "total_tokens": 2_300},
        }
    )
    await proxy.sdk(key).responses.create(model="gpt-5", input="news?", tools=[{"type": "web_search"}])
    [event] = await proxy.events("acme")
    # gpt-5 $1.25 / $10 per 1M; web search $10 / 1K calls; file search $2.50 / 1K calls.
    expected = (2_000 * Decimal("1.25") + 300 * 10) / M + 3 * Decimal("0.01") + Decimal("0.0025")
    assert event["cost_usd"] == usd(expected)
    assert event["tool_calls"] == {"file_search": 1, "web_search": 3}


def responses_body(model: str, output: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1764000000,
        "model": model,
        "status": "completed",
        "output": output,
        "tools": tools,
        "usage": {"input_tokens": 2_000, "output_tokens": 300, "total_tokens": 2_300},
    }


def image_call(n: int, **said: str) -> dict[str, Any]:
    return {"type": "image_generation_call", "id": f"ig_{n}", "status": "completed", "result": "aGk=", **said}


async def test_images_of_the_image_generation_tool_are_charged_at_their_image_model(proxy: Harness) -> None:
    """Before: an image made by the Responses API's image_generation tool was free."""
    key = await proxy.new_client("acme")
    output = [image_call(1, quality="high", size="1024x1536"), image_call(2)]
    tools = [{"type": "image_generation", "model": "gpt-image-1-mini", "quality": "low", "size": "1024x1024"}]
    proxy.upstream.script = replying(responses_body("gpt-5", output, tools))
    await proxy.sdk(key).responses.create(model="gpt-5", input="draw", tools=[{"type": "image_generation"}])
    [event] = await proxy.events("acme")
    # gpt-5 $1.25 / $10 per 1M; gpt-image-1-mini per image (model page, checked 2026-11-25):
    # high 1024x1536 $0.052 (the item's own), low 1024x1024 $0.005 (the tool's, as echoed).
    expected = (2_000 * Decimal("1.25") + 300 * 10) / M + Decimal("0.052") + Decimal("0.005")
    assert event["cost_usd"] == usd(expected)
    assert event["tool_calls"] == {"image_generation": 2}
    assert event["price_source"] == "prices.toml (images at gpt-image-1-mini)"


async def test_the_image_tool_without_a_model_is_priced_at_its_default(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    output = [image_call(1, quality="medium", size="1024x1024")]
    proxy.upstream.script = replying(responses_body("gpt-5", output, [{"type": "image_generation"}]))
    await proxy.sdk(key).responses.create(model="gpt-5", input="draw", tools=[{"type": "image_generation"}])
    [event] = await proxy.events("acme")
    # gpt-image-1, the tool's default model: medium 1024x1024 $0.042.
    assert event["cost_usd"] == usd((2_000 * Decimal("1.25") + 300 * 10) / M + Decimal("0.042"))


async def test_an_image_tool_model_no_catalog_names_is_said_not_guessed(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    tools = [{"type": "image_generation", "model": "gpt-image-9"}]
    proxy.upstream.script = replying(responses_body("gpt-5", [image_call(1)], tools))
    await proxy.sdk(key).responses.create(model="gpt-5", input="draw", tools=[{"type": "image_generation"}])
    [event] = await proxy.events("acme")
    assert event["cost_usd"] == usd((2_000 * Decimal("1.25") + 300 * 10) / M)
    assert event["price_source"] == "prices.toml (no image price for gpt-image-9)"


@pytest.mark.parametrize("model", ["gpt-5.5-pro", "gpt-4o-2024-05-13"])
async def test_a_model_is_never_priced_as_its_base(proxy: Harness, model: str) -> None:
    """Before: gpt-5.5-pro was priced as gpt-5.5 (-83%), gpt-4o-2024-05-13 as gpt-4o."""
    key = await proxy.new_client("acme")
    proxy.upstream.script = replying(chat_body(model, 1_000, 1_000, None))
    await proxy.sdk(key).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    [event] = await proxy.events("acme")
    own = {"gpt-5.5-pro": (30, 180), "gpt-4o-2024-05-13": (5, 15)}[model]
    assert event["cost_usd"] == usd((1_000 * own[0] + 1_000 * own[1]) / M)


async def test_a_name_only_a_prefix_matches_is_refused(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    with pytest.raises(openai.BadRequestError) as caught:
        await proxy.sdk(key).chat.completions.create(
            model="gpt-5.5-turbo-max", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_priced"
    assert proxy.upstream.received == []


async def test_a_tier_the_catalog_lacks_is_priced_standard_and_says_so(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    proxy.upstream.script = replying(chat_body("gpt-4.1-mini", 1_000, 100, "flex"))
    await proxy.sdk(key).chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "x"}]
    )
    [event] = await proxy.events("acme")
    assert event["price_source"] == "prices.toml (no flex rates: standard)"


async def test_the_tier_of_a_stream_is_read_from_its_chunks(proxy: Harness) -> None:
    key = await proxy.new_client("acme")

    async def stream(request: web.Request, raw: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "c", "object": "chat.completion.chunk", "model": "o3", "service_tier": "flex"}
        for piece in (
            {**base, "choices": [{"index": 0, "delta": {"content": "hi"}}]},
            {**base, "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 10}},
        ):
            await response.write(b"data: " + json.dumps(piece).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    proxy.upstream.script = stream
    chunks = await proxy.sdk(key).chat.completions.create(
        model="o3", messages=[{"role": "user", "content": "x"}], stream=True
    )
    _ = [c async for c in chunks]
    [event] = await proxy.events("acme")
    # o3 flex: $1 in, $4 out per 1M.
    assert (event["service_tier"], event["cost_usd"]) == ("flex", usd((40 * 1 + 10 * 4) / M))


# A WebM header (EBML magic and a DocType of "webm") with no readable length,
# as a browser's MediaRecorder may leave it; and bytes that are no audio at all.
WEBM = bytes.fromhex("1a45dfa3") + b"\x9f\x42\x86\x81\x01\x42\x82\x84webm" + b"\x00" * 64
CORRUPT = b"RIFF\x00\x00\x00\x00WAVEnot really"


@pytest.mark.parametrize(("name", "data"), [("voice.webm", WEBM), ("broken.wav", CORRUPT)])
async def test_an_upload_of_unreadable_length_is_charged_its_reservation(
    proxy: Harness, name: str, data: bytes
) -> None:
    """Before: a WebM upload (what browsers record) was charged $0, a way around any budget."""
    key = await proxy.new_client("acme")
    proxy.upstream.script = replying({"text": "hello"})  # no usage, no duration
    await proxy.sdk(key).audio.transcriptions.create(model="whisper-1", file=(name, data))
    [event] = await proxy.events("acme")
    # reserve_audio_seconds (600 s) at whisper-1's $0.006 / minute.
    assert (event["cost_usd"], event["estimated"]) == (usd(Decimal("0.006") * 10), True)


async def test_each_upstream_is_priced_from_its_provider(make_proxy: Any) -> None:
    """A Groq and an Anthropic model through their OpenAI-compatible upstreams,
    priced from their providers' prices (genai-prices 0.2.3, the base catalog):
    llama-3.3-70b-versatile $0.59 in / $0.79 out; claude-opus-4-5 $5 in, $0.50
    cached read, $25 out per 1M (Anthropic's list prices)."""
    groq, anthropic = FakeUpstream(), FakeUpstream()
    groq.script = replying(chat_body("llama-3.3-70b-versatile", 2_000, 500, None))
    body = chat_body("claude-opus-4-5", 3_000, 400, None)
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 1_000}
    anthropic.script = replying(body)
    harness = await make_proxy(
        routes=[
            ({"name": "groq", "models": ["llama-*"], "provider": "groq"}, groq),
            ({"name": "anthropic", "models": ["claude-*"], "provider": "anthropic"}, anthropic),
        ]
    )
    key = await harness.new_client("acme")
    client = harness.sdk(key)
    await client.chat.completions.create(model="llama-3.3-70b-versatile", messages=[])
    await client.chat.completions.create(model="claude-opus-4-5", messages=[])
    with pytest.raises(openai.BadRequestError):  # a name only a prefix matches: never priced
        await client.chat.completions.create(model="claude-opus-4-5-turbo", messages=[])
    events = {e["model"]: e for e in await harness.events("acme")}
    status, shown = await harness.admin("GET", "/admin/pricing/claude-opus-4-5?upstream=anthropic")
    assert events["llama-3.3-70b-versatile"]["cost_usd"] == usd(
        (2_000 * Decimal("0.59") + 500 * Decimal("0.79")) / M
    )
    assert events["llama-3.3-70b-versatile"]["upstream"] == "groq"
    assert events["claude-opus-4-5"]["cost_usd"] == usd((2_000 * 5 + 1_000 * Decimal("0.5") + 400 * 25) / M)
    assert events["claude-opus-4-5"]["price_source"] == "genai-prices 0.2.3"
    assert (status, shown["provider"], shown["output"]) == (200, "anthropic", "25")


async def test_a_regional_upstream_is_charged_its_uplift(make_proxy: Any) -> None:
    """Before: a data-residency endpoint's +10% was never charged."""
    eu = FakeUpstream()
    eu.script = replying(chat_body("gpt-5.5", 1_000, 100, "default"))
    harness = await make_proxy(routes=[({"name": "eu", "regional": True}, eu)])
    key = await harness.new_client("acme")
    await harness.sdk(key).chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "x"}]
    )
    [event] = await harness.events("acme")
    # gpt-5.5 $5 / $30 per 1M, +10% on a regional-processing endpoint.
    assert event["cost_usd"] == usd((1_000 * 5 + 100 * 30) / M * Decimal("1.1"))
    assert (event["price_source"], event["upstream"]) == ("prices.toml (regional +10%)", "eu")


async def test_prices_follow_the_day_in_a_running_process(
    make_proxy: Any, tmp_path: Path, clock: FakeClock
) -> None:
    """The catalogs are read again when the day changes (the first sweep of
    the day): a price that starts on a date applies from it, without a restart."""
    prices = tmp_path / "house.toml"

    def price(output: str) -> str:
        return f'[models."house-model"]\napi_type = "chat"\ninput = "1.00"\noutput = "{output}"\n'

    await asyncio.to_thread(prices.write_text, price("2.00"))
    proxy: Harness = await make_proxy(pricing_files=[prices])
    client = proxy.sdk(await proxy.new_client("acme"))
    chat = {"model": "house-model", "messages": [{"role": "user", "content": "Hi"}]}
    await client.chat.completions.create(**chat)  # 1,200 in, 300 out
    await asyncio.to_thread(prices.write_text, price("4.00"))  # the price from tomorrow on
    await sweep(proxy.services.meter)  # the same day: the prices read at start still hold
    await client.chat.completions.create(**chat)
    clock.advance(days=1)
    await sweep(proxy.services.meter)
    await client.chat.completions.create(**chat)
    costs = [Decimal(e["cost_usd"]) for e in reversed(await proxy.events("acme"))]
    m = Decimal(1_000_000)
    assert costs == [
        (1_200 * Decimal("1.00") + 300 * Decimal("2.00")) / m,
        (1_200 * Decimal("1.00") + 300 * Decimal("2.00")) / m,
        (1_200 * Decimal("1.00") + 300 * Decimal("4.00")) / m,
    ]
