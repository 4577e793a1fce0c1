"""The standing attack suite of the /v1 data path, on both backends.

Each test is one class of attack that got around the meter, the budget or the
upstream key before the walls went up (the failing figure is in its comment).
Expected charges are computed here from list prices and the reservation rule
the README states (every string of a request at 4 characters a token, the
output bound or ``reserve_output_tokens``), never read back from the code.
"""

from __future__ import annotations

import asyncio
import json
import math
from decimal import Decimal
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from taximeter.proxy.gateway.sweeper import sweep
from tests.support.clock import FakeClock
from tests.support.fake_upstream import wav_bytes
from tests.support.harness import Harness

RATE = Decimal(5)  # BRL per USD, the default exchange_rate
GPT_4O = {"input": Decimal("2.50"), "output": Decimal("10.00")}  # USD per 1M tokens, pricing/prices.toml
WHISPER_PER_MINUTE = Decimal("0.006")
RESERVE_OUTPUT = 4096  # reserve_output_tokens default
RESERVE_AUDIO_SECONDS = 600  # reserve_audio_seconds default


def tokens(*strings: str) -> int:
    """The reservation's count of a request's strings: about 4 characters a token."""
    return sum(math.ceil(len(s) / 4) for s in strings)


def gpt_4o_brl(input_tokens: int, output_tokens: int) -> Decimal:
    usd = (input_tokens * GPT_4O["input"] + output_tokens * GPT_4O["output"]) / 1_000_000
    return usd * RATE


async def raw_request(
    proxy: Harness, method: str, target: str, key: str, body: bytes = b"", extra: bytes = b""
) -> tuple[int, Any]:
    """A request whose target goes on the wire exactly as written (no client
    normalises its dot segments or escapes)."""
    host, port = proxy.server.host, proxy.server.port
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode()[:-2] + extra + b"\r\n" + body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    try:
        parsed: Any = json.loads(payload)
    except ValueError:
        parsed = payload
    return int(status_line.split()[1]), parsed


def upstream_paths(proxy: Harness) -> list[str]:
    return [r.path for r in proxy.upstream.received]


# -- 1. path traversal to the upstream ---------------------------------------------------

TRAVERSALS = [
    "/v1/models/%2e%2e/files",
    "/v1/models/%2E%2E/%2E%2E/admin",
    "/v1/models/../files",
    "/v1/models/%252e%252e/files",
    "/v1/models/..%2Ffiles",
    "/v1/models/x%2F..%2F..%2Ffiles",
    "/v1/models/./gpt-4o",
    "/v1/models//gpt-4o",
    "/v1/models/%5c..%5cfiles",
]


@pytest.mark.parametrize("target", TRAVERSALS)
async def test_traversal_never_reaches_the_upstream(proxy: Harness, target: str) -> None:
    """Before: forwarded with the real key to any upstream GET, paused or not."""
    key = await proxy.new_client("acme", mode="tokens", token_limit=1)
    await proxy.admin("POST", "/admin/budgets/acme/pause")
    status, body = await raw_request(proxy, "GET", target, key)
    assert status == 404 and body["error"]["code"] == "endpoint_not_metered"
    assert proxy.upstream.received == []


@pytest.mark.parametrize(
    "target",
    [
        "/v1/audio/voices/%2e%2e/%2e%2e/chat/completions",
        "/v1/audio/voices/..%2F..%2Fchat%2Fcompletions",
        "/v1/audio/voices/../../chat/completions",
    ],
)
async def test_traversal_out_of_a_pass_through_path(make_proxy: Any, target: str) -> None:
    """Before: `POST /v1/files/%2e%2e/chat/completions` was a free completion past a pause."""
    proxy: Harness = await make_proxy(passthrough_paths=["/v1/audio/voices"])
    key = await proxy.new_client("acme", mode="tokens", token_limit=10)
    status, _ = await proxy.admin("POST", "/admin/budgets/acme/pause")
    assert status == 200
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, reply = await raw_request(proxy, "POST", target, key, body)
    assert status == 404 and reply["error"]["code"] == "endpoint_not_metered"
    assert proxy.upstream.received == []


async def test_plain_ids_still_reach_their_own_path(make_proxy: Any) -> None:
    proxy: Harness = await make_proxy(passthrough_paths=["/v1/audio/voices"])
    key = await proxy.new_client("acme")
    await raw_request(proxy, "GET", "/v1/models/ft:gpt-4o-mini:acme::AbC123", key)
    await raw_request(proxy, "GET", "/v1/audio/voices/voice_abc123/samples?limit=2", key)
    assert upstream_paths(proxy) == [
        "/v1/models/ft:gpt-4o-mini:acme::AbC123",
        "/v1/audio/voices/voice_abc123/samples",
    ]


# -- 2. free calls ---------------------------------------------------------------------------


def chat_reply(usage: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1741600000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def answer(body: Any, status: int = 200) -> Any:
    async def script(request: web.Request, raw: bytes) -> web.StreamResponse:
        return web.json_response(body, status=status)

    return script


async def test_background_responses_cannot_run_past_the_budget(proxy: Harness) -> None:
    """Before: 20 background calls, 4M tokens upstream, tokens_used 0. Now
    each holds its reservation until it has run: the budget's worth start."""
    key = await proxy.new_client("acme", mode="tokens", token_limit=5_000)
    sdk = proxy.sdk(key)
    started, refused = 0, 0
    for _ in range(20):  # each reserves ~4,100 tokens (4,096 of output) while it runs
        try:
            await sdk.responses.create(model="gpt-4o", input="write a novel", background=True)
            started += 1
        except openai.RateLimitError:
            refused += 1
    assert (started, refused) == (2, 18)
    assert len(proxy.upstream.running) == 2
    with pytest.raises(openai.BadRequestError) as caught:  # streamed, it would end unmetered
        await sdk.responses.create(model="gpt-4o", input="x", background=True, stream=True)
    assert caught.value.body["param"] == "stream"  # type: ignore[index]
    assert len(proxy.upstream.received) == 2


@pytest.mark.parametrize(
    "usage",
    [
        None,  # no usage at all
        {"prompt_tokens": -5_000_000, "completion_tokens": 10, "total_tokens": 10},
        {"prompt_tokens": 10.0, "completion_tokens": 10, "total_tokens": 20},
        {"prompt_tokens": "10", "completion_tokens": 10, "total_tokens": 20},
        {"prompt_tokens": 2**63, "completion_tokens": 1, "total_tokens": 2**63 + 1},
        {
            "prompt_tokens": 10,
            "completion_tokens": 10,
            "total_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": -9_000_000},
        },
    ],
    ids=["missing", "negative", "float", "string", "huge", "negative-detail"],
)
async def test_a_reply_without_a_sound_count_is_charged_as_reserved(proxy: Harness, usage: Any) -> None:
    """Before: charged 0 unflagged, or a negative cost (cost_used -R$187), or a 500."""
    key = await proxy.new_client("acme", mode="cost", cost_limit="100")
    proxy.upstream.script = answer(chat_reply(usage))
    reply = await proxy.sdk(key).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=100
    )
    assert reply.choices[0].message.content == "ok"
    [event] = await proxy.events("acme")
    reserved_in = tokens("gpt-4o", "user", "hi")
    assert event["estimated"] is True
    assert (event["input_tokens"], event["output_tokens"]) == (reserved_in, 100)
    assert Decimal(event["cost"]) == gpt_4o_brl(reserved_in, 100)
    assert Decimal((await proxy.status("acme"))["cost_used"]) == gpt_4o_brl(reserved_in, 100)


async def test_an_unreadable_upload_is_charged_its_reservation(proxy: Harness) -> None:
    """Before: an upload whose length could not be read, answered as plain text, cost 0."""
    key = await proxy.new_client("acme")
    text = await proxy.sdk(key).audio.transcriptions.create(
        model="whisper-1", file=("a.wav", b"RIFF not really audio"), response_format="text"
    )
    assert "hello" in str(text)
    [event] = await proxy.events("acme")
    assert event["estimated"] is True and Decimal(event["audio_seconds"]) == RESERVE_AUDIO_SECONDS
    expected = RESERVE_AUDIO_SECONDS * WHISPER_PER_MINUTE / 60 * RATE
    assert Decimal(event["cost"]) == expected


async def test_an_unreadable_tts_reply_is_charged_its_reservation(proxy: Harness) -> None:
    """Before: a token-priced TTS reply that was not audio cost 0."""
    key = await proxy.new_client("acme")

    async def garbage(request: web.Request, raw: bytes) -> web.StreamResponse:
        return web.Response(body=b"\x00" * 64, content_type="audio/mpeg")

    proxy.upstream.script = garbage
    text = "x" * 140  # 10 s at the reservation's 14 characters a second
    speech = await proxy.sdk(key).audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=text)
    assert speech.content == b"\x00" * 64
    [event] = await proxy.events("acme")
    assert event["estimated"] is True and Decimal(event["audio_seconds"]) == 10
    assert Decimal(event["cost"]) == Decimal(10) / 60 * Decimal("0.015") * RATE  # per_minute, prices.toml


async def test_leaving_a_stream_early_is_charged_as_reserved(proxy: Harness) -> None:
    """Before: a client that left a reasoning stream after its first delta paid ~8 tokens of ~50,000."""
    key = await proxy.new_client("acme")
    proxy.upstream.gate = asyncio.Event()  # the stream stalls after its first event
    body = {
        "model": "gpt-4o",
        "stream": True,
        "max_tokens": 5000,
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{proxy.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
        resp.close()
    proxy.upstream.gate.set()
    event = await one_event(proxy)
    assert (event["estimated"], event["status"]) == (True, 499)
    assert (event["input_tokens"], event["output_tokens"]) == (tokens("gpt-4o", "user", "hi"), 5000)


async def test_leaving_after_the_upstream_answered_is_charged_as_reserved(proxy: Harness) -> None:
    """Before: a non-streamed call whose client left after the upstream's headers cost 0."""
    key = await proxy.new_client("acme")
    headers_sent, hold = asyncio.Event(), asyncio.Event()

    async def slow_body(request: web.Request, raw: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"id": "chatcmpl-x", ')
        headers_sent.set()
        await hold.wait()
        return response

    proxy.upstream.script = slow_body
    body = {"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(
            http.post(
                f"{proxy.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
        )
        await asyncio.wait_for(headers_sent.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    event = await one_event(proxy)
    hold.set()
    assert event["estimated"] is True and event["status"] == 499
    assert (event["input_tokens"], event["output_tokens"]) == (tokens("gpt-4o", "user", "hi"), 300)


async def one_event(proxy: Harness) -> dict[str, Any]:
    [event] = await proxy.events_once_recorded("acme")
    return event


# -- 3. estimates that miss what the API bills --------------------------------------------


async def test_token_arrays_are_reserved(proxy: Harness) -> None:
    """Before: nested token arrays reserved nothing; 20 parallel calls spent 11x a 10,000-token limit."""
    key = await proxy.new_client("acme", mode="tokens", token_limit=10_000)

    async def call() -> int:
        try:
            await proxy.sdk(key).embeddings.create(model="text-embedding-3-small", input=[[7] * 3_000])
        except openai.RateLimitError:
            return 429
        return 200

    outcomes = await proxy.in_flight_together(call() for _ in range(8))
    # Each reserves 3,000 tokens: a fourth is admitted (9,000 < 10,000), a fifth is not.
    assert outcomes.count(200) == 4 and outcomes.count(429) == 4


async def test_stored_context_is_reserved(proxy: Harness) -> None:
    """previous_response_id pulls in input the request does not show: reserve_input_tokens of it."""
    key = await proxy.new_client("acme", mode="tokens", token_limit=30_000)
    first = await proxy.sdk(key).responses.create(model="gpt-4o", input="Hi")  # 1,050 tokens

    async def call() -> int:
        try:
            await proxy.sdk(key).responses.create(
                model="gpt-4o", input="and then?", previous_response_id=first.id
            )
        except openai.RateLimitError:
            return 429
        return 200

    outcomes = await proxy.in_flight_together(call() for _ in range(4))
    assert outcomes.count(200) == 1  # one holds 32,000 + its output bound: past the 30,000


# -- 6. phantom and double charges ------------------------------------------------------------


async def test_a_client_that_gives_up_during_admission_leaves_nothing_to_charge(
    proxy: Harness, clock: FakeClock
) -> None:
    """Before: the orphaned reservation was charged by the sweeper though no call went out."""
    key = await proxy.new_client("acme", mode="tokens", token_limit=10**6)
    meter = proxy.services.meter
    entered, release = asyncio.Event(), asyncio.Event()
    admit = meter.gate.admit

    async def slow_admit(*args: Any, **kwargs: Any) -> Any:
        outcome = await admit(*args, **kwargs)  # the reservation is held ...
        entered.set()
        await release.wait()  # ... and the answer is slow to come back
        return outcome

    let_go = asyncio.Event()
    forget = meter.release

    async def release_and_tell(*args: Any, **kwargs: Any) -> None:
        await forget(*args, **kwargs)
        let_go.set()

    meter.gate.admit = slow_admit  # type: ignore[method-assign]
    meter.release = release_and_tell  # type: ignore[method-assign]
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(
            http.post(
                f"{proxy.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
        )
        await asyncio.wait_for(entered.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await asyncio.wait_for(let_go.wait(), 10)  # the handler sees the cancellation, lets the reservation go
    release.set()
    meter.gate.admit = admit  # type: ignore[method-assign]
    meter.release = forget  # type: ignore[method-assign]
    clock.advance(seconds=3600)
    assert await sweep(meter) == 0
    assert proxy.upstream.received == [] and await proxy.events("acme") == []


async def test_a_slow_stream_outliving_its_reservation_is_charged_once(
    proxy: Harness, clock: FakeClock
) -> None:
    """Before: the sweeper charged the estimate while the real usage was dropped as a duplicate."""
    key = await proxy.new_client("acme", mode="tokens", token_limit=10**6)
    meter = proxy.services.meter
    proxy.upstream.gate = asyncio.Event()
    stream = await proxy.sdk(key).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"
    ttl = meter.reservation_ttl
    for _ in range(4):  # four reservation lifetimes pass while the client reads slowly
        clock.advance(seconds=ttl.total_seconds() * 0.4)
        assert await sweep(meter) == 0  # kept alive, never charged
    proxy.upstream.gate.set()
    rest = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices) == "Hello there!"
    [event] = await proxy.events("acme")
    assert event["estimated"] is False and event["input_tokens"] == 1200  # the fake's usage
    assert (await proxy.status("acme"))["tokens_used"] == 1500


# -- 7. upstream numbers and sizes ------------------------------------------------------------


async def test_an_oversized_upstream_body_is_not_held_whole(make_proxy: Any) -> None:
    """Before: a 300 MB upstream body was read whole (1 GB RSS)."""
    proxy: Harness = await make_proxy(max_response_bytes=1024 * 1024)
    key = await proxy.new_client("acme")

    async def huge(request: web.Request, raw: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(8):
            await response.write(b" " * 256 * 1024)
        await response.write(json.dumps(chat_reply(None)).encode())
        return response

    proxy.upstream.script = huge
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.sdk(key).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=50
        )
    assert caught.value.status_code == 502
    [event] = await proxy.events("acme")
    assert event["estimated"] is True and event["output_tokens"] == 50


# -- 8. stream parsing -------------------------------------------------------------------------


def sse_script(events: list[dict[str, Any]], *, separator: bytes = b"\n\n") -> Any:
    async def script(request: web.Request, raw: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(b"data: " + json.dumps(event, ensure_ascii=False).encode() + separator)
        await response.write(b"data: [DONE]" + separator)
        return response

    return script


def chunk(content: str | None, usage: dict[str, int] | None, *, final: bool = False) -> dict[str, Any]:
    choices = [] if final else [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": choices,
        "usage": usage,
    }


def usage_of(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def test_running_usage_in_every_chunk_settles_on_the_last(proxy: Harness) -> None:
    """Before: a vLLM-style stream with continuous usage stats was settled on its first chunk."""
    key = await proxy.new_client("acme")
    pieces = [chunk("word ", usage_of(50, n)) for n in range(1, 40)]
    proxy.upstream.script = sse_script([*pieces, chunk(None, usage_of(50, 39), final=True)])
    stream = await proxy.sdk(key).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    # The final usage-only chunk was asked for by taximeter, not the client: hidden.
    assert len([c async for c in stream]) == 39
    [event] = await proxy.events("acme")
    assert (event["input_tokens"], event["output_tokens"], event["estimated"]) == (50, 39, False)


@pytest.mark.parametrize("separator", [b"\r\r", b"\r\n\r\n", b"\n\r\n"])
async def test_every_sse_line_ending_is_read(proxy: Harness, separator: bytes) -> None:
    """Before: events ended by \\r\\r lost their usage (charged as an estimate)."""
    key = await proxy.new_client("acme")
    events = [chunk("Hi", None), chunk(None, usage_of(11, 22), final=True)]
    proxy.upstream.script = sse_script(events, separator=separator)
    stream = await proxy.sdk(key).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    [c async for c in stream]
    [event] = await proxy.events("acme")
    assert (event["input_tokens"], event["output_tokens"], event["estimated"]) == (11, 22, False)


async def test_raw_line_separators_inside_json_keep_the_usage(proxy: Harness) -> None:
    """Before: a raw U+2028 or U+0085 in an event cut it in two and its usage was lost."""
    key = await proxy.new_client("acme")
    events = [chunk("a\u2028b\x85c", None), {**chunk(None, usage_of(11, 22), final=True), "note": "\u2028"}]
    proxy.upstream.script = sse_script(events)
    stream = await proxy.sdk(key).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    [c async for c in stream]
    [event] = await proxy.events("acme")
    assert (event["input_tokens"], event["output_tokens"], event["estimated"]) == (11, 22, False)


async def test_stream_must_be_a_boolean(proxy: Harness) -> None:
    """Before: `"stream": "true"` skipped the usage injection."""
    key = await proxy.new_client("acme")
    body = json.dumps({"model": "gpt-4o", "stream": "true", "messages": [{"role": "user", "content": "hi"}]})
    status, reply = await raw_request(proxy, "POST", "/v1/chat/completions", key, body.encode())
    assert status == 400 and reply["error"]["param"] == "stream"
    assert proxy.upstream.received == []


# -- 9. multipart ------------------------------------------------------------------------------


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    out = []  # joined once: adding to one bytes object part by part takes seconds for 50,000 parts
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


async def test_a_paused_key_is_refused_before_its_form_is_parsed(proxy: Harness) -> None:
    """Before: 2 MiB of tiny parts from a paused key froze every call for 15 s."""
    key = await proxy.new_client("acme", mode="tokens", token_limit=10)
    await proxy.admin("POST", "/admin/budgets/acme/pause")
    body, content_type = multipart(
        [("model", None, b"whisper-1")] + [(f"f{i}", None, b"x") for i in range(50_000)]
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with proxy.http.post(f"{proxy.url}/v1/audio/transcriptions", data=body, headers=headers) as resp:
        assert resp.status == 429
        assert (await resp.json())["error"]["code"] == "budget_exceeded"
    assert loop.time() - started < 5  # a bound, not a target: parsing would take far longer
    assert proxy.upstream.received == []


async def test_two_file_parts_are_refused(proxy: Harness) -> None:
    """Before: two `file` parts, and the last was metered (a tiny one) while the upstream read another."""
    key = await proxy.new_client("acme")
    body, content_type = multipart(
        [
            ("model", None, b"whisper-1"),
            ("file", "long.wav", wav_bytes(30)),
            ("file", "short.wav", wav_bytes(0.1)),
        ]
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    async with proxy.http.post(f"{proxy.url}/v1/audio/transcriptions", data=body, headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert proxy.upstream.received == []


# -- 10. values that end up in logs, labels and rows ------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "gpt-4o\nINFO taximeter.proxy request_metered client=victim cost=0"),
        ("model", "gpt-4o\x00"),
        ("user", "u" * 300),
        ("user", "u\r\nforged"),
    ],
)
async def test_control_characters_are_refused_at_the_edge(proxy: Harness, field: str, value: str) -> None:
    """Before: a `model` with a newline forged a request_metered log line; a NUL wedged the ledger."""
    key = await proxy.new_client("acme")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], field: value}
    status, reply = await raw_request(proxy, "POST", "/v1/chat/completions", key, json.dumps(body).encode())
    assert status == 400 and reply["error"]["param"] == field
    assert proxy.upstream.received == []


@pytest.mark.parametrize("value", ["a\u2028b".encode(), "a\u0085b".encode(), b"a\xffb"])
async def test_a_line_break_or_bad_byte_in_the_end_user_header_is_refused(
    proxy: Harness, value: bytes
) -> None:
    """Before: kept as the end user (a log line break, a label, a CSV cell, a row)."""
    key = await proxy.new_client("acme")
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    extra = b"X-Taximeter-End-User: " + value + b"\r\n"
    status, reply = await raw_request(proxy, "POST", "/v1/chat/completions", key, body, extra)
    assert status == 400 and reply["error"]["param"] == "X-Taximeter-End-User"
    assert proxy.upstream.received == []


async def test_a_streamed_transcription_form_is_not_refused(proxy: Harness) -> None:
    """Multipart fields are text: `stream=true` in a form is the SDK's own shape."""
    key = await proxy.new_client("acme")
    body, content_type = multipart(
        [("model", None, b"whisper-1"), ("stream", None, b"true"), ("file", "a.wav", wav_bytes(1))]
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    async with proxy.http.post(f"{proxy.url}/v1/audio/transcriptions", data=body, headers=headers) as resp:
        assert resp.status == 200
    assert len(proxy.upstream.received) == 1
