"""The operator dashboard (``/dashboard``): server-rendered pages over the
same operations as the admin API.

Every page needs a session (see :mod:`sessions`); every form post also needs
its CSRF token. A GET without a session goes to the login form; a POST
without one is refused, so a stale tab cannot act. This module holds what
every page goes through (:func:`page`) and the small answers they share; the
pages are in ``login``, ``clients`` and ``usage``, the sub-app that serves
them (and turns every error into a page) in ``site``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler

from taximeter.proxy.dashboard.formatting import Formatter
from taximeter.proxy.dashboard.pages import Pages
from taximeter.proxy.dashboard.sessions import Session, Sessions
from taximeter.proxy.operations import Operations

__all__ = [
    "CURRENT_SESSION",
    "DASHBOARD",
    "Dashboard",
    "Page",
    "disabled_page",
    "form_fields",
    "message_page",
    "page",
    "redirect",
]


@dataclass
class Dashboard:
    pages: Pages
    sessions: Sessions | None  # None: no admin token, so no dashboard
    ops: Operations
    fmt: Formatter


# On the root app (set at start-up, when the store is open); the sub-app's
# handlers read it through ``request.config_dict``.
DASHBOARD = web.AppKey("dashboard", Dashboard)
# The session :func:`page` found, so an error page keeps the page's navigation.
CURRENT_SESSION = web.RequestKey("dashboard_session", Session)
Page = Callable[[web.Request, Dashboard, Session], Awaitable[web.StreamResponse]]


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def message_page(
    dash: Dashboard, status: int, title: str, text: str, session: Session | None = None
) -> web.Response:
    csrf = session.csrf if session is not None else ""
    return dash.pages.render(
        "message.html", status=status, title=title, text=text, session=session, csrf=csrf
    )


def disabled_page(dash: Dashboard) -> web.Response:
    return message_page(
        dash, 403, "Dashboard disabled", "Set admin_token (TAXIMETER_ADMIN_TOKEN) to enable the dashboard."
    )


def page(handler: Page) -> Handler:
    """A dashboard handler: needs a live session, and on a POST the form's
    CSRF token. What it raises becomes a page (``site.error_page_middleware``)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        dash = request.config_dict[DASHBOARD]
        if dash.sessions is None:
            return disabled_page(dash)
        session = await dash.sessions.current(request)
        if session is None:
            if request.method == "GET":
                return redirect(f"/dashboard/login?next={quote(request.path_qs)}")
            return message_page(dash, 403, "Session expired", "Your session has ended. Log in again.")
        request[CURRENT_SESSION] = session
        if request.method == "POST":
            form = await request.post()
            if not dash.sessions.csrf_matches(session, str(form.get("csrf", ""))):
                return message_page(
                    dash, 403, "Form refused", "The form's CSRF token is missing or stale.", session
                )
        return await handler(request, dash, session)

    return wrapped


async def form_fields(request: web.Request) -> dict[str, str]:
    """The posted form's text fields."""
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
