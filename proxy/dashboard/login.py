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
    Dashboard,
    disabled_page,
    form_fields,
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
        return disabled_page(dash)
    if await dash.sessions.current(request) is not None:
        return redirect("/dashboard")
    return _login_page(request, dash, status=200, error=None)


def _login_page(request: web.Request, dash: Dashboard, *, status: int, error: str | None) -> web.Response:
    csrf = Sessions.login_token(request)
    response = dash.pages.render(
        "login.html",
        status=status,
        error=error,
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
        return disabled_page(dash)
    throttle = dash.sessions.throttle
    # Checked before the token: while throttled, even the right one is not
    # tried, so the answer tells a guesser nothing.
    wait_s = throttle.retry_after_s(request.remote)
    if wait_s is not None:
        return _throttled(dash, wait_s)
    try:
        form = await form_fields(request)
    except web.HTTPRequestEntityTooLarge:
        return _login_page(request, dash, status=413, error="The form is too large.")
    if not Sessions.login_csrf_matches(request, form.get("csrf", "")):
        return _login_page(request, dash, status=403, error="The form expired. Try again.")
    if not dash.sessions.token_matches(form.get("token", "")):
        log.warning("dashboard_login_failed", extra={"remote": request.remote})
        if throttle.failed(request.remote):  # logged once per lock-out, not per refused try
            log.warning(
                "dashboard_login_throttled",
                extra={"remote": request.remote, "failures": throttle.max_failures},
            )
        return _login_page(request, dash, status=401, error="Wrong admin token.")
    throttle.succeeded(request.remote)
    response = redirect(_safe_next(form.get("next", "/dashboard")))
    await dash.sessions.start(response, request)
    log.info("dashboard_login", extra={"remote": request.remote})
    return response


def _throttled(dash: Dashboard, wait_s: int) -> web.Response:
    minutes = math.ceil(wait_s / 60)
    response = message_page(
        dash,
        429,
        "Too many attempts",
        f"Too many wrong tokens from your address. Try again in {minutes} minute{'s' * (minutes != 1)}.",
    )
    response.headers["Retry-After"] = str(wait_s)
    return response


@page
async def logout(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    response = redirect("/dashboard/login?bye=1")
    assert dash.sessions is not None  # page() answered already otherwise
    await dash.sessions.end(session, response)
    return response
