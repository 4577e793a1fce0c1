"""Files (spec section 4b): uploaded through taximeter and owned by the
client that uploaded them; listed from taximeter's own record, so a client
sees its files only. Free: the upstream charges nothing for a file.

An upload is relayed to the upstream as it arrives, never held whole: each
chunk goes upstream and through :class:`~.uploads.UploadReader`, and the
file's lines through :class:`~taximeter.pricing.batch_input.BatchInputReader`,
so a batch input file is read once, here, into what a batch of it will cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from taximeter.pricing.batch_input import BatchInput, BatchInputReader
from taximeter.pricing.models import OwnedObject
from taximeter.proxy.errors import InvalidInput, RequestTooLarge, UpstreamUnavailable
from taximeter.proxy.gateway import auth
from taximeter.proxy.gateway.objects import valid_id
from taximeter.proxy.gateway.ownership import record_created
from taximeter.proxy.gateway.relay import TooLarge, json_or_none, read_at_most, read_bounded, response_headers
from taximeter.proxy.gateway.uploads import UploadReader, boundary_of
from taximeter.proxy.gateway.upstreams import Upstream
from taximeter.proxy.middleware import REQUEST_ID
from taximeter.proxy.services import Services

__all__ = ["complete_upload", "create_upload", "list_files", "streamed", "upload_file"]

_CHUNK = 256 * 1024
_MAX_REPLY = 1024 * 1024  # a file object is a few hundred bytes
_MAX_LIST = 10_000  # as the upstream's own list


async def upload_file(request: web.Request, services: Services) -> web.StreamResponse:
    """``POST /v1/files``: relayed as it streams in; the file is the uploader's."""
    key = await auth.authenticate(request, services.keys)
    settings = services.settings
    limit = settings.max_file_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"file uploads are limited to {limit} bytes (max_file_bytes)")
    boundary = boundary_of(request.headers.get("Content-Type", ""))
    if boundary is None:
        raise InvalidInput("expected a multipart/form-data body with a boundary", status=400)
    lines = BatchInputReader(
        default_output_tokens=settings.reserve_output_tokens,
        unseen_input_tokens=settings.reserve_input_tokens,
    )
    form = UploadReader(boundary, lines.feed)
    stopped: list[Exception] = []

    async def body() -> AsyncIterator[bytes]:
        size = 0
        try:
            async for chunk in request.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"file uploads are limited to {limit} bytes (max_file_bytes)")
                await asyncio.to_thread(form.feed, chunk)  # parsed off the loop: a big file is CPU
                yield chunk
            await asyncio.to_thread(form.end)
        except ValueError as exc:  # cut short: the upstream gets a body it cannot take
            stopped.append(InvalidInput(f"the upload is not a valid form: {exc}", status=400))
        except RequestTooLarge as exc:
            stopped.append(exc)

    upstream_route = services.router.pick(None)
    headers = {"Content-Type": request.headers["Content-Type"]}
    if upstream_route.authorization:
        headers["Authorization"] = upstream_route.authorization
    url = upstream_route.url("/v1/files", "")
    try:
        async with services.session.post(url, data=body(), headers=headers) as up:
            data = await read_bounded(up, _MAX_REPLY)
            status, content_type = up.status, up.headers.get("Content-Type", "")
            relayed = response_headers(up, request[REQUEST_ID])
    except (aiohttp.ClientError, TimeoutError, TooLarge) as exc:
        if stopped:  # our refusal broke the upload off: say why, not how it broke
            raise stopped[0] from exc
        raise UpstreamUnavailable(f"upstream {upstream_route.name} failed: {type(exc).__name__}") from exc
    if stopped:  # the upstream got a body cut short, and refused it or not: ours is the answer
        raise stopped[0]
    reply = json_or_none(data, content_type)
    if status < 300 and isinstance(reply, dict) and valid_id(reply.get("id")):
        await _own_file(services, key.client_id, upstream_route.name, reply, form, lines, request)
    return web.Response(body=data, status=status, headers=relayed)


async def _own_file(
    services: Services,
    client_id: str,
    upstream: str,
    reply: dict[str, Any],
    form: UploadReader,
    lines: BatchInputReader,
    request: web.Request,
) -> None:
    batch = lines.read if form.fields.get("purpose") == "batch" else None
    await _own(services, request, "file", client_id, upstream, reply, batch)


async def _own(
    services: Services,
    request: web.Request,
    kind: str,
    client_id: str,
    upstream: str,
    shown: dict[str, Any],
    batch: BatchInput | None = None,
) -> None:
    """Record an object the upstream made for ``client_id``, as it showed it."""
    detail: dict[str, Any] = {"object": shown}
    if batch is not None:
        detail["batch_input"] = batch.to_json()
    owned = OwnedObject(str(shown["id"]), kind, client_id, upstream, services.meter.clock(), detail)
    await record_created(services.objects, owned, request[REQUEST_ID])


def streamed(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, for the upstream; cut off past
    ``limit`` bytes (the upstream then refuses a body cut short)."""

    async def chunks() -> AsyncIterator[bytes]:
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                return
            yield chunk

    return chunks()


async def _exchange(
    services: Services, request: web.Request, upstream: Upstream, path: str, body: bytes
) -> tuple[int, bytes, dict[str, str], Any]:
    """A small JSON call upstream: its status, body, headers to relay and JSON."""
    headers = {"Content-Type": "application/json"}
    if upstream.authorization:
        headers["Authorization"] = upstream.authorization
    try:
        async with services.session.post(upstream.url(path, ""), data=body, headers=headers) as up:
            data = await read_bounded(up, _MAX_REPLY)
            relayed = response_headers(up, request[REQUEST_ID])
            return up.status, data, relayed, json_or_none(data, up.headers.get("Content-Type", ""))
    except (aiohttp.ClientError, TimeoutError, TooLarge) as exc:
        raise UpstreamUnavailable(f"upstream {upstream.name} failed: {type(exc).__name__}") from exc


async def create_upload(request: web.Request, services: Services) -> web.StreamResponse:
    """``POST /v1/uploads``: the upload (and the file it becomes) is the caller's."""
    key = await auth.authenticate(request, services.keys)
    body = await read_at_most(request.content, services.settings.max_body_bytes)
    upstream = services.router.pick(None)
    status, data, relayed, reply = await _exchange(services, request, upstream, "/v1/uploads", body)
    if status < 300 and isinstance(reply, dict) and valid_id(reply.get("id")):
        await _own(services, request, "upload", key.client_id, upstream.name, reply)
    return web.Response(body=data, status=status, headers=relayed)


async def complete_upload(
    request: web.Request, services: Services, upload: OwnedObject, upstream: Upstream
) -> web.StreamResponse:
    """``POST /v1/uploads/{id}/complete`` of the caller's upload: the file it
    becomes is the caller's; a batch input is read once, from the upstream."""
    body = await read_at_most(request.content, services.settings.max_body_bytes)
    path = f"/v1/uploads/{upload.object_id}/complete"
    status, data, relayed, reply = await _exchange(services, request, upstream, path, body)
    made = reply.get("file") if isinstance(reply, dict) else None
    if status < 300 and isinstance(made, dict) and valid_id(made.get("id")):
        batch = None
        if made.get("purpose") == "batch":
            batch = await _read_batch_input(services, upstream, str(made["id"]))
        await _own(services, request, "file", upload.client_id, upstream.name, made, batch)
    return web.Response(body=data, status=status, headers=relayed)


async def _read_batch_input(services: Services, upstream: Upstream, file_id: str) -> BatchInput:
    """A batch input file, read through from the upstream line by line."""
    settings = services.settings
    lines = BatchInputReader(
        default_output_tokens=settings.reserve_output_tokens,
        unseen_input_tokens=settings.reserve_input_tokens,
    )
    headers = {} if upstream.authorization is None else {"Authorization": upstream.authorization}
    try:
        async with services.session.get(
            upstream.url(f"/v1/files/{file_id}/content", ""), headers=headers
        ) as up:
            if up.status >= 300:
                raise UpstreamUnavailable(
                    f"upstream {upstream.name} did not give the file's content ({up.status})"
                )
            async for chunk in up.content.iter_chunked(_CHUNK):
                await asyncio.to_thread(lines.feed, chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"upstream {upstream.name} failed: {type(exc).__name__}") from exc
    return lines.end()


async def list_files(request: web.Request, services: Services) -> web.StreamResponse:
    """``GET /v1/files``: the caller's files only, as the upstream lists
    them (``purpose``, ``limit``, ``order``, ``after``), from taximeter's record."""
    key = await auth.authenticate(request, services.keys)
    q = request.query
    try:
        limit = int(q.get("limit", str(_MAX_LIST)))
    except ValueError as exc:
        raise InvalidInput("limit must be an integer", param="limit", status=400) from exc
    if not 1 <= limit <= _MAX_LIST:
        raise InvalidInput(f"limit must be between 1 and {_MAX_LIST}", param="limit", status=400)
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidInput("order must be asc or desc", param="order", status=400)
    after = q.get("after")
    purpose = q.get("purpose")
    files: list[dict[str, Any]] = []
    more = False
    cursor = after if valid_id(after) else None
    if after is None or cursor is not None:
        while len(files) <= limit:  # a purpose filter may skip rows: read on until the page is full
            page = await services.objects.list_objects(
                key.client_id, "file", limit=limit + 1, after=cursor, newest_first=order == "desc"
            )
            for owned in page:
                shown = (owned.detail or {}).get("object")
                if isinstance(shown, dict) and (purpose is None or shown.get("purpose") == purpose):
                    files.append(shown)
            if len(page) <= limit:
                break
            cursor = page[-1].object_id
        more, files = len(files) > limit, files[:limit]
    body = {
        "object": "list",
        "data": files,
        "first_id": files[0]["id"] if files else None,
        "last_id": files[-1]["id"] if files else None,
        "has_more": more,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")
