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

from taximeter.proxy.dashboard import clients, login, portal, usage
from taximeter.proxy.dashboard.dashboard import CURRENT_SESSION, DASHBOARD, N_, formatter, message_page
from taximeter.proxy.dashboard.languages import LANG_COOKIE, supported
from taximeter.proxy.errors import TaximeterError
from taximeter.proxy.middleware import REQUEST_ID, from_aiohttp, logged_path
from taximeter.store.base import StoreUnavailable

__all__ = ["dashboard_app", "error_page_middleware", "portal_app"]

log = logging.getLogger("taximeter.dashboard")

# aiohttp's own refusals, told in words an operator reads (by status); any
# other error shows its own message.
_HTTP_PAGES = {
    404: (N_("Page not found"), N_("There is no dashboard page at this address.")),
    405: (N_("Not allowed"), N_("This address does not take that kind of request.")),
}
_PORTAL_PAGES = {
    405: _HTTP_PAGES[405],
    404: (N_("Link not valid"), N_("This link is not valid or has been revoked. Ask for a new one.")),
    410: (N_("Link expired"), N_("This link has expired. Ask for a new one.")),
}
_LANG_COOKIE_S = 365 * 24 * 3600


async def _error_page(request: web.Request, error: TaximeterError, title: str, text: str) -> web.Response:
    response = await message_page(request, error.status, title, text, request.get(CURRENT_SESSION))
    response.headers.update(error.headers())  # a 405 keeps its Allow
    return response


@web.middleware
async def language_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A language picked with the switch (``?lang=``) is kept in a cookie."""
    response = await handler(request)
    chosen = supported(request.query.get("lang"))
    if chosen is not None and not response.prepared:
        response.set_cookie(
            LANG_COOKIE, chosen, max_age=_LANG_COOKIE_S, path="/", httponly=True, samesite="Lax"
        )
    return response


@web.middleware
async def error_page_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error of the dashboard's routes as a page of its templates."""
    try:
        return await handler(request)
    except TaximeterError as exc:
        return await _error_page(request, exc, N_("Not done"), exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect is an answer, not an error
            raise
        title, text = _HTTP_PAGES.get(exc.status, (N_("Not done"), exc.text or exc.reason))
        return await _error_page(request, from_aiohttp(exc), title, text)
    except StoreUnavailable as exc:
        request_id = request[REQUEST_ID]
        log.warning("store_unavailable", extra={"request_id": request_id, "error": str(exc)})
        return await message_page(
            request, 503, N_("Store unavailable"), N_("The store cannot be reached; try again shortly.")
        )
    except Exception:
        request_id = request[REQUEST_ID]
        log.exception("unhandled_error", extra={"request_id": request_id, "path": request.path})
        fmt = await formatter(request)
        text = fmt.gettext("Something went wrong; it is logged under request id %(id)s.") % {"id": request_id}
        return await message_page(request, 500, N_("Internal error"), text)


async def static(request: web.Request) -> web.StreamResponse:
    return request.config_dict[DASHBOARD].pages.static_file(request.match_info["name"])


def dashboard_app() -> web.Application:
    """The dashboard as a sub-app, to be mounted at ``/dashboard``."""
    app = web.Application(middlewares=[language_middleware, error_page_middleware])
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
            web.post(f"{client}/portal-links", clients.create_portal_link),
            web.post(f"{client}/portal-links/revoke", clients.revoke_portal_links),
            web.post(client + "/keys/{prefix}/revoke", clients.revoke_key),
        ]
    )
    return app


@web.middleware
async def portal_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error of the portal as a page that leads nowhere else, logged
    without the link's token (it opens the page)."""
    try:
        return await handler(request)
    except (TaximeterError, web.HTTPException) as exc:
        error = exc if isinstance(exc, TaximeterError) else from_aiohttp(exc)
        if isinstance(exc, web.HTTPException) and exc.status < 400:
            raise
        title, text = _PORTAL_PAGES.get(error.status, (N_("Not done"), error.message))
        response = await message_page(request, error.status, title, text, portal=True)
        response.headers.update(error.headers())  # a 405 keeps its Allow
        return response
    except StoreUnavailable as exc:
        log.warning("store_unavailable", extra={"request_id": request[REQUEST_ID], "error": str(exc)})
        title, text = N_("Unavailable"), N_("This page cannot be shown right now; try again shortly.")
        return await message_page(request, 503, title, text, portal=True)
    except Exception:
        request_id = request[REQUEST_ID]
        log.exception("unhandled_error", extra={"request_id": request_id, "path": logged_path(request.path)})
        fmt = await formatter(request)
        text = fmt.gettext("Something went wrong; it is logged under request id %(id)s.") % {"id": request_id}
        return await message_page(request, 500, N_("Internal error"), text, portal=True)


def portal_app() -> web.Application:
    """The tenant portal as a sub-app, to be mounted at ``/portal``."""
    app = web.Application(middlewares=[language_middleware, portal_error_middleware])
    app.add_routes([web.get("/{token}", portal.portal)])
    return app
