"""Bodies read within bounds, and the upstream's headers a client may see:
what every relay of an upstream's answer starts from."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import web

from taximeter.proxy.errors import InvalidJson, RequestTooLarge

__all__ = [
    "TooLarge",
    "json_object",
    "json_or_none",
    "read_at_most",
    "read_body",
    "read_bounded",
    "response_headers",
]

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


def response_headers(upstream: aiohttp.ClientResponse, request_id: str) -> dict[str, str]:
    """The upstream's headers a client may see: not hop-by-hop ones, not the
    operator's account, and not the shared key's rate limits (x-ratelimit-*:
    what every tenant together has left, and not this client's limits)."""
    headers = {
        k: v
        for k, v in upstream.headers.items()
        if k.lower() not in _DROP_RESPONSE and not k.lower().startswith("x-ratelimit-")
    }
    headers["X-Taximeter-Request-Id"] = request_id
    return headers


class TooLarge(Exception):
    pass


async def read_bounded(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole upstream body, or TooLarge once it passes ``limit`` bytes."""
    if upstream.content_length is not None:  # the usual case: one read of a known size
        if upstream.content_length > limit:
            raise TooLarge
        return await upstream.read()
    return await read_at_most(upstream.content, limit)


async def read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """A body read in pieces, or TooLarge once it passes ``limit`` bytes: a
    hostile peer cannot make us hold more."""
    chunks, size = [], 0
    async for chunk in content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def json_or_none(data: bytes, content_type: str) -> Any:
    if "json" not in content_type:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object, or InvalidJson saying why."""
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise InvalidJson("request body must be a JSON object")
    return fields


async def read_body(request: web.Request, limit: int) -> bytes:
    """A client's whole request body, or 413 past ``limit`` bytes (refused
    before reading when its declared length says so)."""
    try:
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge
        return await read_at_most(request.content, limit)
    except TooLarge as exc:
        raise RequestTooLarge(f"request body is larger than the {limit}-byte limit") from exc
