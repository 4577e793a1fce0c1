"""A fast fake upstream for the benchmark: canned chat (JSON and SSE) and
embeddings replies with usage, so the proxy, not this, is what is measured.

    python -m bench.upstream PORT [--uvloop]

``/{prefix}/paced/{chunks}/{seconds}/v1/chat/completions`` streams slowly
instead (the ``streams`` scenario, bench/streams.py): ``chunks`` chat chunks
spread evenly over ``seconds``, each sent when its time comes, whatever the
last one's delay; then the finish chunk, the usage chunk (when the request
asks for it) and ``data: [DONE]`` in one last write, a pacing gap after the
last chunk. Every completion has its own id and its own prompt token count,
and the time each write was sent is kept (``time.monotonic``, one clock for
every process on the machine) for ``GET /{prefix}/paced-sent``, which hands
them over once. ``GET /paced-open`` tells how many paced streams are open.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import resource
import sys
import time
import uuid

from aiohttp import web

_USAGE = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
_CHAT = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1741600000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello there!"}, "finish_reason": "stop"}
        ],
        "usage": _USAGE,
    }
).encode()
_EMBEDDING = json.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
).encode()


def _chunk(delta: dict[str, str] | None, usage: bool = False) -> bytes:
    body: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1741600000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    if usage:
        body["usage"] = _USAGE
    return b"data: " + json.dumps(body).encode() + b"\n\n"


_STREAM = [_chunk({"role": "assistant", "content": ""})] + [
    _chunk({"content": w}) for w in ("Hello", " there", "!")
]
_STREAM_END = _chunk(None, usage=True) + b"data: [DONE]\n\n"


# Calls served per path prefix (one per benchmark target): the ledger check
# compares a target's events with the upstream calls it made.
SERVED: dict[str, int] = {}


def _count(request: web.Request) -> None:
    prefix = request.match_info["prefix"]
    SERVED[prefix] = SERVED.get(prefix, 0) + 1


async def served(request: web.Request) -> web.Response:
    return web.json_response(SERVED)


async def chat(request: web.Request) -> web.StreamResponse:
    _count(request)
    body = await request.read()
    if b'"stream":true' not in body.replace(b" ", b""):
        return web.Response(body=_CHAT, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for piece in _STREAM:
        await response.write(piece)
    include_usage = b'"include_usage":true' in body.replace(b" ", b"")
    await response.write(_STREAM_END if include_usage else b"data: [DONE]\n\n")
    await response.write_eof()
    return response


# Paced streams: open ones per prefix, and each completion's send times per prefix.
PACED_OPEN: dict[str, int] = {}
PACED_SENT: dict[str, dict[str, list[float]]] = {}
_SERIAL = itertools.count()
_WORDS = (" Hello", " there", ",", " how", " can", " I", " help", " you", " today", "?")


def _compact(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=16)
def _paced_parts(chunks: int, usage: bool) -> tuple[tuple[bytes, ...], bytes]:
    """Each paced chunk's bytes after its id, and the finish chunk's."""

    def after_id(delta: dict[str, object], finish: str | None) -> bytes:
        body: dict[str, object] = {
            "object": "chat.completion.chunk",
            "created": 1741600000,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage:
            body["usage"] = None  # every chunk but the last says so when usage is asked for
        return b'",' + _compact(body)[1:] + b"\n\n"

    first: dict[str, object] = {"role": "assistant", "content": _WORDS[0], "refusal": None}
    parts = [after_id(first, None)]
    parts += [after_id({"content": _WORDS[k % len(_WORDS)]}, None) for k in range(1, chunks)]
    return tuple(parts), after_id({}, "stop")


def _usage_chunk(completion: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    body = {
        "id": completion,
        "object": "chat.completion.chunk",
        "created": 1741600000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_bench",
        "choices": [],
        "usage": usage,
    }
    return b"data: " + _compact(body) + b"\n\n"


async def _pace(response: web.StreamResponse, writes: list[bytes], gap: float, sent: list[float]) -> None:
    """Write ``writes[k]`` at ``k * gap`` seconds from now, noting when each went."""
    start = time.monotonic()
    for k, data in enumerate(writes):
        delay = start + k * gap - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent.append(time.monotonic())
        await response.write(data)


async def paced(request: web.Request) -> web.StreamResponse:
    """A chat completion streamed slowly (see the module's docstring)."""
    _count(request)
    prefix = request.match_info["prefix"]
    chunks, seconds = int(request.match_info["chunks"]), float(request.match_info["seconds"])
    include_usage = b'"include_usage":true' in (await request.read()).replace(b" ", b"")
    serial = next(_SERIAL)
    completion = f"chatcmpl-{serial:08d}{uuid.uuid4().hex[:21]}"
    head = b'data: {"id":"' + completion.encode()
    parts, finish = _paced_parts(chunks, include_usage)
    last = head + finish
    if include_usage:
        last += _usage_chunk(completion, 8 + serial % 1000, chunks)
    writes = [head + part for part in parts] + [last + b"data: [DONE]\n\n"]
    sent = PACED_SENT.setdefault(prefix, {})[completion] = []
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    PACED_OPEN[prefix] = PACED_OPEN.get(prefix, 0) + 1
    try:
        await _pace(response, writes, seconds / chunks, sent)
    finally:
        PACED_OPEN[prefix] -= 1
    await response.write_eof()
    return response


async def paced_open(request: web.Request) -> web.Response:
    return web.json_response(PACED_OPEN)


async def paced_sent(request: web.Request) -> web.Response:
    """The send times of the prefix's completions so far, handed over once."""
    return web.json_response(PACED_SENT.pop(request.match_info["prefix"], {}))


def raise_fd_limit() -> int:
    """Lift this process's open-file limit to its hard limit (children inherit
    it): thousands of streams hold thousands of sockets. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 16 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


async def embeddings(request: web.Request) -> web.Response:
    _count(request)
    await request.read()
    return web.Response(body=_EMBEDDING, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/{prefix}/v1/chat/completions", chat)
    app.router.add_post("/{prefix}/v1/embeddings", embeddings)
    app.router.add_get("/served", served)
    app.router.add_post("/{prefix}/paced/{chunks:\\d+}/{seconds}/v1/chat/completions", paced)
    app.router.add_get("/paced-open", paced_open)
    app.router.add_get("/{prefix}/paced-sent", paced_sent)
    raise_fd_limit()
    loop = None
    if "--uvloop" in sys.argv[2:]:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
