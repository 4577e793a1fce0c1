"""The dashboard as an aiohttp sub-app, mounted at ``/dashboard``: its
routes, its static files, and every error of its routes as a page.

Its middleware answers in HTML what the root app's would answer in JSON: an
error a page raises (a client that does not exist, a form over the body
limit), aiohttp's own (no such page, a method the page does not take, with
its ``Allow``), a store that cannot be reached, and anything unexpected, as
a logged 500 that shows no internals. The tenant portal's sub-app, also
here, tells its errors with the same middleware in its own words.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from taximeter.proxy.dashboard import clients, login, portal, usage
from taximeter.proxy.dashboard.dashboard import CURRENT_SESSION, DASHBOARD, N_, formatter, message_page
from taximeter.proxy.dashboard.languages import LANG_COOKIE, supported
from taximeter.proxy.errors import TaximeterError
from taximeter.proxy.middleware import REQUEST_ID, from_aiohttp, logged_path
from taximeter.store.base import StoreUnavailable

__all__ = ["dashboard_app", "error_page_middleware", "portal_app"]

log = logging.getLogger("taximeter.dashboard")

Words = dict[int, tuple[str, str]]  # status -> title and text of its page


@dataclass(frozen=True)
class _ErrorPages:
    """How one sub-app tells its errors: ``http`` words aiohttp's own refusals
    (any other shows its own message); ``own`` words the site's own errors
    whose message is not for its readers; ``unavailable`` words a store that
    cannot be reached; ``portal`` pages lead nowhere else and may be framed."""

    http: Words
    own: Words
    unavailable: tuple[str, str]
    portal: bool = False


# aiohttp's own refusals, told in words an operator reads (by status); any
# other error shows its own message.
_HTTP_PAGES: Words = {
    404: (N_("Page not found"), N_("There is no dashboard page at this address.")),
    405: (N_("Not allowed"), N_("This address does not take that kind of request.")),
}
_DASHBOARD = _ErrorPages(
    http=_HTTP_PAGES,
    own={},
    unavailable=(N_("Store unavailable"), N_("The store cannot be reached; try again shortly.")),
)
# A tenant reads only what the link it followed came to, never why.
_PORTAL_WORDS: Words = {
    405: _HTTP_PAGES[405],
    404: (N_("Link not valid"), N_("This link is not valid or has been revoked. Ask for a new one.")),
    410: (N_("Link expired"), N_("This link has expired. Ask for a new one.")),
}
_PORTAL = _ErrorPages(
    http=_PORTAL_WORDS,
    own=_PORTAL_WORDS,
    unavailable=(N_("Unavailable"), N_("This page cannot be shown right now; try again shortly.")),
    portal=True,
)
_LANG_COOKIE_S = 365 * 24 * 3600


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


def _error_pages(pages: _ErrorPages) -> Middleware:
    """Every error of a sub-app's routes as a page of its templates: its own
    errors, aiohttp's (no such page, a method the page does not take, with
    its ``Allow``), a store that cannot be reached, and anything unexpected,
    as a logged 500 that shows no internals (nor a portal link's token)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers: dict[str, str] = {}
        try:
            return await handler(request)
        except TaximeterError as exc:
            status, headers = exc.status, exc.headers()
            title, text = pages.own.get(exc.status, (N_("Not done"), exc.message))
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect is an answer, not an error
                raise
            status, headers = exc.status, from_aiohttp(exc).headers()  # a 405 keeps its Allow
            title, text = pages.http.get(exc.status, (N_("Not done"), exc.text or exc.reason))
        except StoreUnavailable as exc:
            log.warning("store_unavailable", extra={"request_id": request[REQUEST_ID], "error": str(exc)})
            status, (title, text) = 503, pages.unavailable
        except Exception:
            request_id = request[REQUEST_ID]
            path = logged_path(request.path)
            log.exception("unhandled_error", extra={"request_id": request_id, "path": path})
            fmt = await formatter(request)
            status, title = 500, N_("Internal error")
            text = fmt.gettext("Something went wrong; it is logged under request id %(id)s.") % {
                "id": request_id
            }
        response = await message_page(
            request, status, title, text, request.get(CURRENT_SESSION), portal=pages.portal
        )
        response.headers.update(headers)
        return response

    return middleware


error_page_middleware = _error_pages(_DASHBOARD)
portal_error_middleware = _error_pages(_PORTAL)


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


def portal_app() -> web.Application:
    """The tenant portal as a sub-app, to be mounted at ``/portal``."""
    app = web.Application(middlewares=[language_middleware, portal_error_middleware])
    app.add_routes([web.get("/{token}", portal.portal)])
    return app
