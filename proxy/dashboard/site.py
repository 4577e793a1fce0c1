"""The dashboard as an aiohttp sub-app, mounted at ``/dashboard``: its
routes, its static files, and every error of its routes as a page.

Its middleware answers in HTML what the root app's would answer in JSON: an
error a page raises (a client that does not exist, a form over the body
limit), aiohttp's own (no such page, a method the page does not take, with
its ``Allow``), a store that cannot be reached, and anything unexpected, as
a logged 500 that shows no internals.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from taximeter.proxy.dashboard import clients, login, usage
from taximeter.proxy.dashboard.dashboard import CURRENT_SESSION, DASHBOARD, message_page
from taximeter.proxy.errors import TaximeterError
from taximeter.proxy.middleware import REQUEST_ID, from_aiohttp
from taximeter.store.base import StoreUnavailable

__all__ = ["dashboard_app", "error_page_middleware"]

log = logging.getLogger("taximeter.dashboard")

# aiohttp's own refusals, told in words an operator reads (by status); any
# other error shows its own message.
_HTTP_PAGES = {
    404: ("Page not found", "There is no dashboard page at this address."),
    405: ("Not allowed", "This address does not take that kind of request."),
}


def _error_page(request: web.Request, error: TaximeterError, title: str, text: str) -> web.Response:
    dash = request.config_dict[DASHBOARD]
    response = message_page(dash, error.status, title, text, request.get(CURRENT_SESSION))
    response.headers.update(error.headers())  # a 405 keeps its Allow
    return response


@web.middleware
async def error_page_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error of the dashboard's routes as a page of its templates."""
    try:
        return await handler(request)
    except TaximeterError as exc:
        return _error_page(request, exc, "Not done", exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect is an answer, not an error
            raise
        title, text = _HTTP_PAGES.get(exc.status, ("Not done", exc.text or exc.reason))
        return _error_page(request, from_aiohttp(exc), title, text)
    except StoreUnavailable as exc:
        request_id = request[REQUEST_ID]
        log.warning("store_unavailable", extra={"request_id": request_id, "error": str(exc)})
        dash = request.config_dict[DASHBOARD]
        return message_page(dash, 503, "Store unavailable", "The store cannot be reached; try again shortly.")
    except Exception:
        request_id = request[REQUEST_ID]
        log.exception("unhandled_error", extra={"request_id": request_id, "path": request.path})
        dash = request.config_dict[DASHBOARD]
        text = f"Something went wrong; it is logged under request id {request_id}."
        return message_page(dash, 500, "Internal error", text)


async def static(request: web.Request) -> web.StreamResponse:
    return request.config_dict[DASHBOARD].pages.static_file(request.match_info["name"])


def dashboard_app() -> web.Application:
    """The dashboard as a sub-app, to be mounted at ``/dashboard``."""
    app = web.Application(middlewares=[error_page_middleware])
    client = "/clients/{client_id}"
    app.add_routes(
        [
            web.get("", clients.overview),  # /dashboard itself
            web.get("/login", login.login_form),
            web.post("/login", login.login),
            web.post("/logout", login.logout),
            web.get("/usage", usage.usage),
            web.get("/static/{name}", static),
            web.post("/clients", clients.create_client),
            web.get(client, clients.client_page),
            web.post(f"{client}/budget", clients.save_budget),
            web.post(f"{client}/limits", clients.save_limits),
            web.post(client + "/budget/{action:reset|pause|resume|delete}", clients.budget_action),
            web.post(f"{client}/keys", clients.create_key),
            web.post(client + "/keys/{prefix}/revoke", clients.revoke_key),
        ]
    )
    return app
