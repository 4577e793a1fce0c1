"""Logging in to the dashboard and out of it.

The login form carries its own CSRF token (no session exists yet to derive
one from); wrong tokens are counted per address, and while an address is
throttled even the right token is not tried.
"""

from __future__ import annotations

import logging
import math
from urllib.parse import urlsplit

from aiohttp import web

from taximeter.proxy.dashboard.dashboard import (
    DASHBOARD,
    N_,
    Dashboard,
    disabled_page,
    form_fields,
    formatter,
    message_page,
    page,
    redirect,
)
from taximeter.proxy.dashboard.sessions import Session, Sessions

__all__ = ["login", "login_form", "logout"]

log = logging.getLogger("taximeter.dashboard")


def _safe_next(target: str) -> str:
    """Only a dashboard path: a login link cannot send the operator elsewhere."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard") or "\\" in target:
        return "/dashboard"
    return target


async def login_form(request: web.Request) -> web.StreamResponse:
    dash = request.config_dict[DASHBOARD]
    if dash.sessions is None:
        return await disabled_page(request)
    if await dash.sessions.current(request) is not None:
        return redirect("/dashboard")
    return await _login_page(request, dash, status=200, error=None)


async def _login_page(
    request: web.Request, dash: Dashboard, *, status: int, error: str | None
) -> web.Response:
    """The login form; ``error`` (marked with ``N_``) above it in the page's language."""
    csrf = Sessions.login_token(request)
    fmt = await formatter(request)
    response = dash.pages.render(
        "login.html",
        fmt,
        status=status,
        error=None if error is None else fmt.gettext(error),
        here="/dashboard/login",
        next=_safe_next(request.query.get("next", "/dashboard")),
        csrf=csrf,
        session=None,
        ended="bye" in request.query,
    )
    Sessions.set_login_token(request, response, csrf)  # the form and the cookie carry it together
    return response


async def login(request: web.Request) -> web.StreamResponse:
    dash = request.config_dict[DASHBOARD]
    if dash.sessions is None:
        return await disabled_page(request)
    throttle = dash.sessions.throttle
    # Checked before the token: while throttled, even the right one is not
    # tried, so the answer tells a guesser nothing.
    wait_s = throttle.retry_after_s(request.remote)
    if wait_s is not None:
        return await _throttled(request, wait_s)
    try:
        form = await form_fields(request)
    except web.HTTPRequestEntityTooLarge:
        return await _login_page(request, dash, status=413, error=N_("The form is too large."))
    if not Sessions.login_csrf_matches(request, form.get("csrf", "")):
        return await _login_page(request, dash, status=403, error=N_("The form expired. Try again."))
    if not dash.sessions.token_matches(form.get("token", "")):
        log.warning("dashboard_login_failed", extra={"remote": request.remote})
        if throttle.failed(request.remote):  # logged once per lock-out, not per refused try
            log.warning(
                "dashboard_login_throttled",
                extra={"remote": request.remote, "failures": throttle.max_failures},
            )
        return await _login_page(request, dash, status=401, error=N_("Wrong admin token."))
    throttle.succeeded(request.remote)
    response = redirect(_safe_next(form.get("next", "/dashboard")))
    await dash.sessions.start(response, request)
    log.info("dashboard_login", extra={"remote": request.remote})
    return response


async def _throttled(request: web.Request, wait_s: int) -> web.Response:
    minutes = math.ceil(wait_s / 60)
    fmt = await formatter(request)
    text = fmt.ngettext(
        "Too many wrong tokens from your address. Try again in %(num)d minute.",
        "Too many wrong tokens from your address. Try again in %(num)d minutes.",
        minutes,
    ) % {"num": minutes}
    response = await message_page(request, 429, N_("Too many attempts"), text)
    response.headers["Retry-After"] = str(wait_s)
    return response


@page
async def logout(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    response = redirect("/dashboard/login?bye=1")
    assert dash.sessions is not None  # page() answered already otherwise
    await dash.sessions.end(session, response)
    return response
