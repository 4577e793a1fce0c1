"""One middleware: a request id for every request, and every error rendered in
OpenAI's shape. Store failures that reach here become 503 metering_unavailable;
anything unexpected a logged 500 that shows no internals."""

from __future__ import annotations

import logging
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from taximeter.proxy.errors import MeteringUnavailable, TaximeterError
from taximeter.store.base import StoreUnavailable

__all__ = ["REQUEST_ID", "error_middleware", "error_response"]

REQUEST_ID = web.RequestKey("request_id", str)

log = logging.getLogger("taximeter.http")


def error_response(error: TaximeterError, request_id: str) -> web.Response:
    headers = {"X-Taximeter-Request-Id": request_id, **error.headers()}
    return web.json_response(error.body(), status=error.status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = f"req_{uuid.uuid4().hex}"
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except TaximeterError as exc:
        return error_response(exc, request_id)
    except StoreUnavailable as exc:
        log.warning("store_unavailable", extra={"request_id": request_id, "error": str(exc)})
        return error_response(MeteringUnavailable("metering is unavailable; try again shortly"), request_id)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.status != 404 and exc.status != 405:
            raise
        error = TaximeterError(exc.reason, status=exc.status)
        error.code = "not_found" if exc.status == 404 else "method_not_allowed"  # type: ignore[misc]
        error.type = "invalid_request_error"  # type: ignore[misc]
        return error_response(error, request_id)
    except Exception:
        log.exception("unhandled_error", extra={"request_id": request_id, "path": request.path})
        return error_response(TaximeterError("internal error"), request_id)
    if not response.prepared:
        response.headers.setdefault("X-Taximeter-Request-Id", request_id)
    return response
