"""Files (spec section 4b): uploaded through taximeter and owned by the
client that uploaded them; listed from taximeter's own record, so a client
sees its files only. Free: the upstream charges nothing for a file.

An upload is relayed to the upstream as it arrives, never held whole: each
chunk goes upstream and through :class:`~.uploads.UploadReader`, and the
file's lines through :class:`~taximeter.pricing.batch_input.BatchInputReader`,
so a batch input file is read once, here, into what a batch of it will cost.
A refusal on the way (too large, not a form) aborts the upstream request: the
upstream never gets a body that merely looks complete. Once the upstream has
the call, it runs to its end and its object is recorded even if the client
has gone (the object would otherwise be no one's).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from taximeter.pricing.batch_input import BatchInput, BatchInputReader
from taximeter.pricing.models import OwnedObject
from taximeter.proxy.errors import InvalidInput, RequestTooLarge, TaximeterError, UpstreamUnavailable
from taximeter.proxy.gateway import auth
from taximeter.proxy.gateway.bodies import (
    TooLarge,
    json_or_none,
    read_body,
    read_bounded,
    response_headers,
)
from taximeter.proxy.gateway.objects import valid_id
from taximeter.proxy.gateway.ownership import record_created
from taximeter.proxy.gateway.uploads import UploadReader, boundary_of
from taximeter.proxy.gateway.upstreams import Upstream
from taximeter.proxy.middleware import REQUEST_ID
from taximeter.proxy.services import Services
from taximeter.proxy.settings import Settings

__all__ = [
    "complete_upload",
    "create_upload",
    "list_files",
    "list_owned",
    "own",
    "read_batch_input",
    "streamed",
    "upload_file",
    "upstream_failure",
    "upstream_json",
]

_CHUNK = 256 * 1024
_MAX_REPLY = 1024 * 1024  # a file object is a few hundred bytes
_MAX_LIST = 10_000  # as the upstream's own list

_Reply = tuple[int, bytes, dict[str, str], Any]  # status, body, headers to relay, its JSON


def streamed(request: web.Request, limit: int, form: UploadReader | None = None) -> AsyncIterator[bytes]:
    """The request body as it arrives, for the upstream, each chunk first
    read by ``form`` (in a thread: a big file is CPU), whose end is checked
    before the body ends. Past ``limit`` bytes, or when ``form`` refuses the
    body, it raises: the upstream request is aborted and
    :func:`upstream_failure` says why."""

    async def chunks() -> AsyncIterator[bytes]:
        if request.content_length is not None and request.content_length > limit:
            raise RequestTooLarge(f"uploads are limited to {limit} bytes (max_file_bytes)")
        size = 0
        try:
            async for chunk in request.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"uploads are limited to {limit} bytes (max_file_bytes)")
                if form is not None:
                    await asyncio.to_thread(form.feed, chunk)
                yield chunk
            if form is not None:
                form.end()
        except ValueError as exc:  # the form refused the body
            raise InvalidInput(f"the upload is not a valid form: {exc}", status=400) from exc

    return chunks()


def upstream_failure(exc: BaseException, upstream: Upstream) -> TaximeterError:
    """The error a client gets when a call upstream broke: the refusal that
    aborted it (raised by :func:`streamed`), or the upstream's failure."""
    cause = exc.__cause__
    if isinstance(cause, TaximeterError):
        return cause
    return UpstreamUnavailable(f"upstream {upstream.name} failed: {type(exc).__name__}")


def _batch_reader(settings: Settings) -> BatchInputReader:
    return BatchInputReader(
        default_output_tokens=settings.reserve_output_tokens,
        unseen_input_tokens=settings.reserve_input_tokens,
    )


async def upstream_json(
    services: Services,
    request: web.Request | None,
    upstream: Upstream,
    method: str,
    path: str,
    body: bytes | AsyncIterator[bytes] | None = None,
    content_type: str = "application/json",
) -> _Reply:
    """A call upstream whose reply is one small JSON object (the headers
    to relay are for ``request``'s client; none without one)."""
    headers = (
        {"Content-Type": content_type, **upstream.credentials()}
        if body is not None
        else upstream.credentials()
    )
    try:
        async with services.session.request(method, upstream.url(path, ""), data=body, headers=headers) as up:
            data = await read_bounded(up, _MAX_REPLY)
            relayed = response_headers(up, request[REQUEST_ID]) if request is not None else {}
            return up.status, data, relayed, json_or_none(data, up.headers.get("Content-Type", ""))
    except (aiohttp.ClientError, TimeoutError, TooLarge) as exc:
        raise upstream_failure(exc, upstream) from exc


async def own(
    services: Services,
    request_id: str,
    kind: str,
    client_id: str,
    upstream: Upstream,
    shown: dict[str, Any],
    batch: BatchInput | None = None,
) -> None:
    """Record an object the upstream made for ``client_id``, as it showed it."""
    detail: dict[str, Any] = {"object": shown}
    if batch is not None:
        detail["batch_input"] = batch.to_json()
    owned = OwnedObject(str(shown["id"]), kind, client_id, upstream.name, services.meter.clock(), detail)
    await record_created(services.objects, [owned], request_id)


def _made(status: int, reply: Any) -> dict[str, Any] | None:
    """The object a successful reply shows, when it names one by a usable id."""
    if status < 300 and isinstance(reply, dict) and valid_id(reply.get("id")):
        return reply
    return None


async def upload_file(request: web.Request, services: Services) -> web.StreamResponse:
    """``POST /v1/files``: relayed as it streams in; the file is the uploader's."""
    key = await auth.authenticate(request, services.keys)
    content_type = request.headers.get("Content-Type", "")
    boundary = boundary_of(content_type)
    if boundary is None:
        raise InvalidInput("expected a multipart/form-data body with a boundary", status=400)
    lines = _batch_reader(services.settings)
    form = UploadReader(boundary, lines.feed)

    async def relay() -> web.StreamResponse:
        upstream = services.router.pick(None)
        body = streamed(request, services.settings.max_file_bytes, form)
        status, data, relayed, reply = await upstream_json(
            services, request, upstream, "POST", "/v1/files", body, content_type
        )
        made = _made(status, reply)
        if made is not None:
            batch = lines.end() if form.fields.get("purpose") == "batch" else None
            await own(services, request[REQUEST_ID], "file", key.client_id, upstream, made, batch)
        return web.Response(body=data, status=status, headers=relayed)

    return await services.shielded(relay())


async def create_upload(request: web.Request, services: Services) -> web.StreamResponse:
    """``POST /v1/uploads``: the upload (and the file it becomes) is the caller's."""
    key = await auth.authenticate(request, services.keys)
    body = await read_body(request, services.settings.max_body_bytes)

    async def relay() -> web.StreamResponse:
        upstream = services.router.pick(None)
        status, data, relayed, reply = await upstream_json(
            services, request, upstream, "POST", "/v1/uploads", body
        )
        made = _made(status, reply)
        if made is not None:
            await own(services, request[REQUEST_ID], "upload", key.client_id, upstream, made)
        return web.Response(body=data, status=status, headers=relayed)

    return await services.shielded(relay())


async def complete_upload(
    request: web.Request, services: Services, upload: OwnedObject, upstream: Upstream
) -> web.StreamResponse:
    """``POST /v1/uploads/{id}/complete`` of the caller's upload: the file it
    becomes is the caller's; a batch input is read once, from the upstream
    (a read that fails leaves it unread, never the file unowned)."""
    body = await read_body(request, services.settings.max_body_bytes)

    async def relay() -> web.StreamResponse:
        path = f"/v1/uploads/{upload.object_id}/complete"
        status, data, relayed, reply = await upstream_json(services, request, upstream, "POST", path, body)
        made = _made(status, reply.get("file") if isinstance(reply, dict) else None)
        if made is not None:
            batch = None
            if made.get("purpose") == "batch":
                try:
                    batch = await read_batch_input(services, upstream, str(made["id"]))
                except UpstreamUnavailable:
                    batch = None  # read when a batch of it is admitted
            await own(services, request[REQUEST_ID], "file", upload.client_id, upstream, made, batch)
        return web.Response(body=data, status=status, headers=relayed)

    return await services.shielded(relay())


async def read_batch_input(services: Services, upstream: Upstream, file_id: str) -> BatchInput:
    """A batch input file, read through from the upstream line by line."""
    lines = _batch_reader(services.settings)
    url = upstream.url(f"/v1/files/{file_id}/content", "")
    try:
        async with services.session.get(url, headers=upstream.credentials()) as up:
            if up.status >= 300:
                raise UpstreamUnavailable(
                    f"upstream {upstream.name} answered {up.status} for a file's content"
                )
            async for chunk in up.content.iter_chunked(_CHUNK):
                await asyncio.to_thread(lines.feed, chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise upstream_failure(exc, upstream) from exc
    return lines.end()


async def list_files(request: web.Request, services: Services) -> web.StreamResponse:
    """``GET /v1/files``: the caller's files only (``purpose`` filters them)."""
    purpose = request.query.get("purpose")
    return await list_owned(request, services, "file", lambda shown: purpose in (None, shown.get("purpose")))


async def list_owned(
    request: web.Request, services: Services, kind: str, keep: Callable[[dict[str, Any]], bool]
) -> web.StreamResponse:
    """A list endpoint of the caller's objects of ``kind`` (those ``keep``
    takes), as the upstream lists them (``limit``, ``order``, ``after``),
    from taximeter's record: a client sees its own only."""
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
    found: list[dict[str, Any]] = []
    more = False
    cursor = after if valid_id(after) else None
    if after is None or cursor is not None:
        while len(found) <= limit:  # a filter may skip rows: read on until the page is full
            page = await services.objects.list_objects(
                key.client_id, kind, limit=limit + 1, after=cursor, newest_first=order == "desc"
            )
            for owned in page:
                shown = (owned.detail or {}).get("object")
                if isinstance(shown, dict) and keep(shown):
                    found.append(shown)
            if len(page) <= limit:
                break
            cursor = page[-1].object_id
        more, found = len(found) > limit, found[:limit]
    body = {
        "object": "list",
        "data": found,
        "first_id": found[0]["id"] if found else None,
        "last_id": found[-1]["id"] if found else None,
        "has_more": more,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")
