"""The root app's middlewares, which every request passes through (those of
the admin and dashboard sub-apps run inside them): a request id for every
request, and every error rendered in OpenAI's shape. Store failures that
reach here become 503 metering_unavailable; anything unexpected a logged 500
that shows no internals.

The admin sub-app renders its errors with :func:`json_error_middleware` too;
the dashboard's become pages (``dashboard/site.py``), so here they are only
a last resort.
"""

from __future__ import annotations

import logging
import re
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from taximeter.proxy.errors import (
    MeteringUnavailable,
    MethodNotAllowed,
    NotFoundError,
    RequestTooLarge,
    TaximeterError,
)
from taximeter.store.base import StoreUnavailable

__all__ = [
    "REQUEST_ID",
    "error_response",
    "from_aiohttp",
    "json_error_middleware",
    "logged_path",
    "request_id_middleware",
]

REQUEST_ID = web.RequestKey("request_id", str)

log = logging.getLogger("taximeter.http")


def error_response(error: TaximeterError, request_id: str) -> web.Response:
    headers = {"X-Taximeter-Request-Id": request_id, **error.headers()}
    return web.json_response(error.body(), status=error.status, headers=headers)


def from_aiohttp(exc: web.HTTPException) -> TaximeterError:
    """The error of ours for one aiohttp raised itself: no route (404), a method
    the route lacks (405, its ``Allow`` kept), a body over ``client_max_size`` (413)."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        message = f"method {exc.method} is not allowed here; use {', '.join(sorted(exc.allowed_methods))}"
        return MethodNotAllowed(message, allowed=exc.allowed_methods)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return RequestTooLarge(exc.text or "request body is too large")
    if isinstance(exc, web.HTTPNotFound):
        return NotFoundError(exc.reason)
    error = TaximeterError(exc.reason, status=exc.status)
    if exc.status < 500:
        error.type = "invalid_request_error"  # type: ignore[misc]
    error.code = re.sub(r"[^a-z0-9]+", "_", exc.reason.lower()).strip("_") or "http_error"  # type: ignore[misc]
    return error


def logged_path(path: str) -> str:
    """``path`` as logs may carry it: a portal link's token opens its page."""
    return "/portal/…" if path.startswith("/portal/") else path


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request its id, and every response not yet sent the id's header."""
    request_id = f"req_{uuid.uuid4().hex}"
    request[REQUEST_ID] = request_id
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault("X-Taximeter-Request-Id", request_id)
    return response


@web.middleware
async def json_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error of the routes below it as an OpenAI-shaped JSON answer.
    Needs :func:`request_id_middleware` outside it."""
    request_id = request[REQUEST_ID]
    try:
        return await handler(request)
    except TaximeterError as exc:
        return error_response(exc, request_id)
    except StoreUnavailable as exc:
        log.warning("store_unavailable", extra={"request_id": request_id, "error": str(exc)})
        return error_response(MeteringUnavailable("metering is unavailable; try again shortly"), request_id)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect is an answer, not an error
            raise
        return error_response(from_aiohttp(exc), request_id)
    except Exception:
        log.exception("unhandled_error", extra={"request_id": request_id, "path": logged_path(request.path)})
        return error_response(TaximeterError("internal error"), request_id)
