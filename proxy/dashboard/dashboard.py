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

from taximeter.proxy.dashboard.formatting import N_, Formatter
from taximeter.proxy.dashboard.languages import LANG_COOKIE, Languages, supported
from taximeter.proxy.dashboard.pages import Pages, portal_headers
from taximeter.proxy.dashboard.sessions import Session, Sessions
from taximeter.proxy.operations import Operations

__all__ = [
    "CURRENT_SESSION",
    "DASHBOARD",
    "N_",
    "Dashboard",
    "Page",
    "disabled_page",
    "form_fields",
    "formatter",
    "message_page",
    "page",
    "redirect",
]


@dataclass
class Dashboard:
    pages: Pages
    sessions: Sessions | None  # None: no admin token, so no dashboard
    ops: Operations
    languages: Languages
    frame_ancestors: tuple[str, ...] = ()  # origins that may frame the tenant portal


# On the root app (set at start-up, when the store is open); the sub-app's
# handlers read it through ``request.config_dict``.
DASHBOARD = web.AppKey("dashboard", Dashboard)
# The session :func:`page` found, so an error page keeps the page's navigation.
CURRENT_SESSION = web.RequestKey("dashboard_session", Session)
# The page's language and number format, picked once per request (:func:`formatter`).
FORMATTER = web.RequestKey("dashboard_formatter", Formatter)
Page = Callable[[web.Request, Dashboard, Session], Awaitable[web.StreamResponse]]


async def formatter(request: web.Request, currency: str | None = None) -> Formatter:
    """The request's language and number format (see :mod:`languages`):
    ``?lang=`` or its cookie, the setting, Accept-Language, then the usual
    locale of ``currency`` (default: the server's)."""
    found = request.get(FORMATTER)
    if found is None:
        dash = request.config_dict[DASHBOARD]
        chosen = supported(request.query.get("lang")) or supported(request.cookies.get(LANG_COOKIE))
        accept = request.headers.get("Accept-Language", "")
        locale = dash.languages.pick(chosen, accept, currency or dash.ops.currency)
        found = request[FORMATTER] = await dash.languages.formatter(locale)
    return found


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


async def message_page(
    request: web.Request,
    status: int,
    title: str,
    text: str,
    session: Session | None = None,
    *,
    portal: bool = False,
) -> web.Response:
    """A page that only says something: ``title`` and ``text`` in the page's
    language when the catalog has them (mark literals with :func:`N_`). A
    ``portal`` page has no way into the dashboard and may be framed."""
    dash, fmt = request.config_dict[DASHBOARD], await formatter(request)
    csrf = session.csrf if session is not None else ""
    return dash.pages.render(
        "message.html",
        fmt,
        status=status,
        headers=portal_headers(dash.frame_ancestors) if portal else None,
        title=fmt.gettext(title),
        text=fmt.gettext(text),
        session=session,
        csrf=csrf,
        portal=portal,
    )


async def disabled_page(request: web.Request) -> web.Response:
    return await message_page(
        request,
        403,
        N_("Dashboard disabled"),
        N_("Set admin_token (TAXIMETER_ADMIN_TOKEN) to enable the dashboard."),
    )


def page(handler: Page) -> Handler:
    """A dashboard handler: needs a live session, and on a POST the form's
    CSRF token. What it raises becomes a page (``site.error_page_middleware``)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        dash = request.config_dict[DASHBOARD]
        if dash.sessions is None:
            return await disabled_page(request)
        session = await dash.sessions.current(request)
        if session is None:
            if request.method == "GET":
                return redirect(f"/dashboard/login?next={quote(request.path_qs)}")
            return await message_page(
                request, 403, N_("Session expired"), N_("Your session has ended. Log in again.")
            )
        request[CURRENT_SESSION] = session
        if request.method == "POST":
            form = await request.post()
            if not dash.sessions.csrf_matches(session, str(form.get("csrf", ""))):
                return await message_page(
                    request,
                    403,
                    N_("Form refused"),
                    N_("The form's CSRF token is missing or stale."),
                    session,
                )
        return await handler(request, dash, session)

    return wrapped


async def form_fields(request: web.Request) -> dict[str, str]:
    """The posted form's text fields."""
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
