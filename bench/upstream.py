"""A fast fake upstream for the benchmark: canned chat (JSON and SSE) and
embeddings replies with usage, so the proxy, not this, is what is measured.

    python -m bench.upstream PORT
"""

from __future__ import annotations

import json
import sys

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


async def embeddings(request: web.Request) -> web.Response:
    _count(request)
    await request.read()
    return web.Response(body=_EMBEDDING, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/{prefix}/v1/chat/completions", chat)
    app.router.add_post("/{prefix}/v1/embeddings", embeddings)
    app.router.add_get("/served", served)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
