"""The operator dashboard (``/dashboard``): server-rendered pages over the
same operations as the admin API.

Every page needs a session (see :mod:`sessions`); every form post also needs
its CSRF token. A GET without a session goes to the login form; a POST
without one is refused, so a stale tab cannot act.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from decimal import Decimal
from urllib.parse import quote, urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState, Client
from taximeter.proxy.dashboard.budget_form import form_from_state, parse_budget_form
from taximeter.proxy.dashboard.cards import Card, build_card, order_cards
from taximeter.proxy.dashboard.charts import bar_list, column_chart
from taximeter.proxy.dashboard.formatting import Formatter
from taximeter.proxy.dashboard.pages import Pages
from taximeter.proxy.dashboard.sessions import Session, Sessions
from taximeter.proxy.errors import InvalidInput, NotFoundError, TaximeterError
from taximeter.proxy.operations import Operations
from taximeter.store.base import StoreUnavailable

__all__ = ["DASHBOARD", "Dashboard", "dashboard_routes"]

log = logging.getLogger("taximeter.dashboard")

RECENT_EVENTS = 50
USAGE_DAYS = 30
# What a redirect after an action says; only these fixed texts are shown.
DONE = {
    "budget": "Budget saved.",
    "reset": "Budget reset: counting starts again now.",
    "pause": "Client paused.",
    "resume": "Client resumed.",
    "resume-at-limit": (
        "Resumed, but a limit is still reached: raise it or reset the budget to let calls through."
    ),
    "delete": "Budget removed: the client is metered but never blocked.",
    "revoked": "Key revoked.",
    "created": "Client created. Give it a key and a budget.",
}


@dataclass
class Dashboard:
    pages: Pages
    sessions: Sessions | None  # None: no admin token, so no dashboard
    ops: Operations
    fmt: Formatter


DASHBOARD = web.AppKey("dashboard", Dashboard)
Page = Callable[[web.Request, Dashboard, Session], Awaitable[web.StreamResponse]]


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _message(
    dash: Dashboard, status: int, title: str, text: str, session: Session | None = None
) -> web.Response:
    csrf = session.csrf if session is not None else ""
    return dash.pages.render(
        "message.html", status=status, title=title, text=text, session=session, csrf=csrf
    )


def _disabled(dash: Dashboard) -> web.Response:
    return _message(
        dash, 403, "Dashboard disabled", "Set admin_token (TAXIMETER_ADMIN_TOKEN) to enable the dashboard."
    )


def page(handler: Page) -> Handler:
    """A dashboard handler: needs a live session, and on a POST the form's
    CSRF token. Errors become pages, not JSON."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        dash = request.app[DASHBOARD]
        if dash.sessions is None:
            return _disabled(dash)
        session = None
        try:
            session = await dash.sessions.current(request)
            if session is None:
                if request.method == "GET":
                    return _redirect(f"/dashboard/login?next={quote(request.path_qs)}")
                return _message(dash, 403, "Session expired", "Your session has ended. Log in again.")
            if request.method == "POST":
                form = await request.post()
                if not dash.sessions.csrf_matches(session, str(form.get("csrf", ""))):
                    return _message(
                        dash, 403, "Form refused", "The form's CSRF token is missing or stale.", session
                    )
            return await handler(request, dash, session)
        except TaximeterError as exc:
            return _message(dash, exc.status, "Not done", exc.message, session)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # aiohttp's own, e.g. a form over client_max_size: a page here too, not JSON.
            return _message(dash, exc.status, "Not done", exc.text or exc.reason, session)
        except StoreUnavailable:
            return _message(dash, 503, "Store unavailable", "The store cannot be reached; try again shortly.")

    return wrapped


async def _form(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}


# -- login -----------------------------------------------------------------------


def _safe_next(target: str) -> str:
    """Only a dashboard path: a login link cannot send the operator elsewhere."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard") or "\\" in target:
        return "/dashboard"
    return target


async def login_form(request: web.Request) -> web.StreamResponse:
    dash = request.app[DASHBOARD]
    if dash.sessions is None:
        return _disabled(dash)
    if await dash.sessions.current(request) is not None:
        return _redirect("/dashboard")
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
    dash = request.app[DASHBOARD]
    if dash.sessions is None:
        return _disabled(dash)
    throttle = dash.sessions.throttle
    # Checked before the token: while throttled, even the right one is not
    # tried, so the answer tells a guesser nothing.
    wait_s = throttle.retry_after_s(request.remote)
    if wait_s is not None:
        return _throttled(dash, wait_s)
    try:
        form = await _form(request)
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
    response = _redirect(_safe_next(form.get("next", "/dashboard")))
    await dash.sessions.start(response, request)
    log.info("dashboard_login", extra={"remote": request.remote})
    return response


def _throttled(dash: Dashboard, wait_s: int) -> web.Response:
    minutes = math.ceil(wait_s / 60)
    response = _message(
        dash,
        429,
        "Too many attempts",
        f"Too many wrong tokens from your address. Try again in {minutes} minute{'s' * (minutes != 1)}.",
    )
    response.headers["Retry-After"] = str(wait_s)
    return response


@page
async def logout(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    response = _redirect("/dashboard/login?bye=1")
    assert dash.sessions is not None  # page() answered already otherwise
    await dash.sessions.end(session, response)
    return response


# -- overview ------------------------------------------------------------------------


async def _card(dash: Dashboard, client: Client, state: BudgetState | None) -> Card:
    """The client's card, with its spend this period (the last 30 days without a budget)."""
    ops = dash.ops
    since = state.period_start if state is not None else ops.clock() - timedelta(days=USAGE_DAYS)
    spend = await ops.spend_by_api_type(client.id, since)
    return build_card(client, state, spend, dash.fmt, ops.currency)


async def _cards(dash: Dashboard, clients: list[Client], query: str) -> list[Card]:
    states = {s.client_id: s for s in await dash.ops.budgets()}
    cards = await asyncio.gather(*(_card(dash, c, states.get(c.id)) for c in clients))
    return order_cards(list(cards), query)


async def _overview(
    request: web.Request,
    dash: Dashboard,
    session: Session,
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
) -> web.Response:
    query = request.query.get("q", "")
    clients = await dash.ops.clients()
    return dash.pages.render(
        "overview.html",
        status=status,
        session=session,
        csrf=session.csrf,
        cards=await _cards(dash, clients, query),
        total=len(clients),
        query=query,
        errors=errors or {},
        values=values or {},
    )


@page
async def overview(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    return await _overview(request, dash, session)


@page
async def create_client(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    form = await _form(request)
    client_id = form.get("id", "").strip()
    try:
        await dash.ops.create_client(client_id, form.get("name", "").strip() or None)
    except TaximeterError as exc:
        errors = {exc.param or "id": exc.message}
        return await _overview(request, dash, session, status=exc.status, errors=errors, values=form)
    return _redirect(f"/dashboard/clients/{client_id}?done=created")


# -- one client ---------------------------------------------------------------------


async def _client_page(
    request: web.Request,
    dash: Dashboard,
    session: Session,
    *,
    status: int = 200,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    new_key: str | None = None,
) -> web.Response:
    ops = dash.ops
    client = await ops.client(request.match_info["client_id"])
    state = await _budget_or_none(ops, client.id)
    events = await ops.events(client.id, RECENT_EVENTS)
    return dash.pages.render(
        "client.html",
        status=status,
        session=session,
        csrf=session.csrf,
        client=client,
        card=await _card(dash, client, state),
        state=state,
        keys=await ops.keys(client.id),
        events=events,
        values=values or form_from_state(state, ops.timezone),
        errors=errors or {},
        new_key=new_key,
        done=DONE.get(request.query.get("done", "")),
        fmt=dash.fmt,
        currency=state.config.currency if state is not None else ops.currency,
    )


async def _budget_or_none(ops: Operations, client_id: str) -> BudgetState | None:
    try:
        return await ops.budget(client_id)
    except NotFoundError:
        return None


@page
async def client_page(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    return await _client_page(request, dash, session)


@page
async def save_budget(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    client_id = request.match_info["client_id"]
    form = await _form(request)
    body, errors = parse_budget_form(form)
    if not errors:
        try:
            await dash.ops.put_budget(client_id, body)
        except InvalidInput as exc:
            errors[exc.param or "mode"] = exc.message
    if errors:
        return await _client_page(request, dash, session, status=422, values=form, errors=errors)
    return _redirect(f"/dashboard/clients/{client_id}?done=budget")


@page
async def budget_action(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    client_id, action = request.match_info["client_id"], request.match_info["action"]
    done = action
    if action == "delete":
        await dash.ops.delete_budget(client_id)
    else:
        state = await dash.ops.change_budget(client_id, action)
        if action == "resume" and budgets.refusal(state) is not None:
            done = "resume-at-limit"
    return _redirect(f"/dashboard/clients/{client_id}?done={done}")


@page
async def create_key(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    secret, _ = await dash.ops.create_key(request.match_info["client_id"])
    # Shown on this response only: the page is not cached and the key is never stored.
    return await _client_page(request, dash, session, status=201, new_key=secret)


@page
async def revoke_key(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    client_id, prefix = request.match_info["client_id"], request.match_info["prefix"]
    key = await dash.ops.find_key(prefix)
    if key is None or key.client_id != client_id:
        raise NotFoundError(f"client {client_id!r} has no key {prefix!r}")
    await dash.ops.revoke_key(prefix)
    return _redirect(f"/dashboard/clients/{client_id}?done=revoked")


# -- usage --------------------------------------------------------------------------


@page
async def usage(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    ops, fmt = dash.ops, dash.fmt
    clients = await ops.clients()
    client_id = request.query.get("client_id") or None
    if client_id is not None and all(c.id != client_id for c in clients):
        raise NotFoundError(f"no client {client_id!r}")
    today = ops.clock().astimezone(UTC).date()
    first = today - timedelta(days=USAGE_DAYS - 1)
    start, end = first.isoformat(), today.isoformat()
    _, _, days = await ops.usage_report(client_id, start, end, "day")
    _, _, models = await ops.usage_report(client_id, start, end, "model")
    _, _, kinds = await ops.usage_report(client_id, start, end, "api_type")
    spent = {row.key: row.cost for row in days}
    daily = [(d.isoformat(), spent.get(d.isoformat(), Decimal(0))) for d in _days(first, USAGE_DAYS)]

    def money(amount: Decimal) -> str:
        return fmt.money(amount, ops.currency)

    by_cost = sorted(models, key=lambda r: r.cost, reverse=True)
    kinds_by_cost = sorted(kinds, key=lambda r: r.cost, reverse=True)
    return dash.pages.render(
        "usage.html",
        session=session,
        csrf=session.csrf,
        clients=clients,
        client_id=client_id,
        start=start,
        end=end,
        total=money(sum((v for _, v in daily), Decimal(0))),
        requests=sum(r.requests for r in days),
        daily_chart=column_chart(
            daily, label=money, title=f"Spend per day, {start} to {end} (UTC)", tick=lambda day: day[5:]
        ),
        model_chart=bar_list([(r.key, r.cost) for r in by_cost], label=money, title="Spend by model"),
        kind_chart=bar_list([(r.key, r.cost) for r in kinds_by_cost], label=money, title="Spend by api_type"),
        models=by_cost,
        kinds=kinds_by_cost,
        fmt=fmt,
        currency=ops.currency,
    )


def _days(first: date, count: int) -> list[date]:
    return [first + timedelta(days=i) for i in range(count)]


async def static(request: web.Request) -> web.StreamResponse:
    return request.app[DASHBOARD].pages.static_file(request.match_info["name"])


def dashboard_routes() -> list[web.RouteDef]:
    client = "/dashboard/clients/{client_id}"
    return [
        web.get("/dashboard", overview),
        web.get("/dashboard/login", login_form),
        web.post("/dashboard/login", login),
        web.post("/dashboard/logout", logout),
        web.get("/dashboard/usage", usage),
        web.get("/dashboard/static/{name}", static),
        web.post("/dashboard/clients", create_client),
        web.get(client, client_page),
        web.post(f"{client}/budget", save_budget),
        web.post(client + "/budget/{action:reset|pause|resume|delete}", budget_action),
        web.post(f"{client}/keys", create_key),
        web.post(client + "/keys/{prefix}/revoke", revoke_key),
    ]
