"""The dashboard's overview (one card per client) and each client's page,
with the forms that change a client: budget, reset, pause, resume, keys."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode

from aiohttp import web

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState, Client
from taximeter.proxy.dashboard.budget_form import form_from_state, parse_budget_form
from taximeter.proxy.dashboard.cards import (
    METRICS,
    WINDOWS,
    Card,
    binding_bar,
    build_card,
    order_clients,
)
from taximeter.proxy.dashboard.cards import limit_rows as limits_shown
from taximeter.proxy.dashboard.dashboard import N_, Dashboard, form_fields, formatter, page, redirect
from taximeter.proxy.dashboard.formatting import Formatter
from taximeter.proxy.dashboard.limits_form import form_from_limits, parse_limits_form, rows_from_form
from taximeter.proxy.dashboard.sessions import Session
from taximeter.proxy.dashboard.usage import USAGE_DAYS
from taximeter.proxy.errors import ConflictError, InvalidInput, NotFoundError, TaximeterError
from taximeter.proxy.operations import Operations
from taximeter.proxy.services import public_base

__all__ = [
    "RECENT_EVENTS",
    "budget_action",
    "client_card",
    "client_page",
    "client_timezone",
    "create_client",
    "create_key",
    "create_portal_link",
    "overview",
    "revoke_key",
    "revoke_portal_links",
    "save_budget",
]

RECENT_EVENTS = 50
OVERVIEW_PAGE = 50  # cards per page of the overview
# What a redirect after an action says; only these fixed texts are shown.
DONE = {
    "budget": N_("Budget saved."),
    "limits": N_("Limits saved."),
    "reset": N_("Budget reset: counting starts again now."),
    "pause": N_("Client paused."),
    "resume": N_("Client resumed."),
    "resume-at-limit": N_(
        "Resumed, but a limit is still reached: raise it or reset the budget to let calls through."
    ),
    "delete": N_("Budget removed: the client is metered but never blocked."),
    "revoked": N_("Key revoked."),
    "created": N_("Client created. Give it a key and a budget."),
    "portal-revoked": N_("Every portal link of this client is revoked."),
}


def _spend_since(state: BudgetState | None, now: datetime) -> datetime:
    """A card's spend is this period's (the last 30 days without a budget)."""
    return state.period_start if state is not None else now - timedelta(days=USAGE_DAYS)


async def client_card(
    ops: Operations,
    fmt: Formatter,
    client: Client,
    state: BudgetState | None,
    spend: dict[str, Decimal] | None = None,
) -> Card:
    """The client's card, with its spend (read here unless given)."""
    if spend is None:
        spend = await ops.spend_by_api_type(client.id, _spend_since(state, ops.clock()))
    card = build_card(client, state, spend, fmt, client.terms.currency or ops.currency, ops.clock())
    if client.terms.limits:
        card = replace(card, binding=binding_bar(await ops.limits_of(client, state), fmt))
    return card


async def _cards(ops: Operations, fmt: Formatter, client_ids: list[str]) -> list[Card]:
    """The cards of these clients (each read whole: terms, budget, limits;
    one deleted meanwhile is left out)."""
    found = [await ops.find_client(client_id) for client_id in client_ids]
    shown = [c for c in found if c is not None]
    states = {c.id: await ops.find_budget(c.id) for c in shown}  # the ledger was flushed once
    now = ops.clock()  # one start for every client without a budget: one read for them all
    spent = await ops.spend_of_clients({c.id: _spend_since(states[c.id], now) for c in shown})
    return [await client_card(ops, fmt, c, states[c.id], spent[c.id]) for c in shown]


def _page_number(text: str) -> int:
    digits = text.isascii() and text.isdigit() and len(text) < 10  # not "²", not a huge number
    return int(text) if digits and int(text) > 0 else 1


async def _overview(
    request: web.Request,
    dash: Dashboard,
    session: Session,
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
) -> web.Response:
    """One page of cards, closest to a limit first: every client is ordered
    from one read of them all; only the page's clients are read whole."""
    query = request.query.get("q", "")
    ops = dash.ops
    standings = await ops.standings()
    matched = order_clients(standings, query)
    pages = max(1, -(-len(matched) // OVERVIEW_PAGE))
    number = min(_page_number(request.query.get("page", "")), pages)
    shown = matched[(number - 1) * OVERVIEW_PAGE : number * OVERVIEW_PAGE]
    fmt = await formatter(request)

    def link(to: int) -> str | None:
        if not 1 <= to <= pages or to == number:
            return None
        return "/dashboard?" + urlencode({**({"q": query} if query else {}), "page": to})

    return dash.pages.render(
        "overview.html",
        fmt,
        status=status,
        here="/dashboard",
        session=session,
        csrf=session.csrf,
        cards=await _cards(ops, fmt, [client_id for client_id, _, _ in shown]),
        total=len(standings),
        first=fmt.number((number - 1) * OVERVIEW_PAGE + 1),
        last=fmt.number((number - 1) * OVERVIEW_PAGE + len(shown)),
        matched=fmt.number(len(matched)),
        page_number=fmt.number(number),
        pages=fmt.number(pages),
        previous_url=link(number - 1),
        next_url=link(number + 1),
        query=query,
        errors=errors or {},
        values=values or {},
    )


@page
async def overview(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    return await _overview(request, dash, session)


@page
async def create_client(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    form = await form_fields(request)
    client_id = form.get("id", "").strip()
    try:
        await dash.ops.create_client(client_id, form.get("name", "").strip() or None)
    except TaximeterError as exc:
        errors = {exc.param or "id": exc.message}
        return await _overview(request, dash, session, status=exc.status, errors=errors, values=form)
    return redirect(f"/dashboard/clients/{client_id}?done=created")


async def _client_page(
    request: web.Request,
    dash: Dashboard,
    session: Session,
    *,
    status: int = 200,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    new_key: str | None = None,
    limit_rows: list[dict[str, str]] | None = None,
    portal_link: tuple[str, str] | None = None,
) -> web.Response:
    ops = dash.ops
    client = await ops.client(request.match_info["client_id"])
    state = await _budget_or_none(ops, client.id)
    events = await ops.events(client.id, RECENT_EVENTS)
    fmt = await formatter(request)
    currency = state.config.currency if state is not None else (client.terms.currency or ops.currency)
    return dash.pages.render(
        "client.html",
        fmt,
        status=status,
        here=f"/dashboard/clients/{client.id}",
        session=session,
        csrf=session.csrf,
        client=client,
        card=await client_card(ops, fmt, client, state),
        state=state,
        keys=await ops.keys(client.id),
        events=events,
        values=values or form_from_state(state, ops.timezone),
        errors=errors or {},
        new_key=new_key,
        limits=limits_shown(await ops.limits(client.id), fmt, currency, client_timezone(ops, client, state)),
        metrics=METRICS,
        windows=WINDOWS,
        limit_rows=limit_rows or form_from_limits(client.terms.limits),
        done=_done(fmt, request.query.get("done", "")),
        portal_link=portal_link,
        currency=currency,
    )


def client_timezone(ops: Operations, client: Client, state: BudgetState | None) -> str:
    """Where the client's days start: its budget's timezone, its own, the server's."""
    if state is not None:
        return state.config.timezone
    return client.terms.timezone or ops.timezone


def _done(fmt: Formatter, action: str) -> str | None:
    """What the page says after ``action`` (a redirect's ``done``), in its language."""
    said = DONE.get(action)
    return None if said is None else fmt.gettext(said)


async def _budget_or_none(ops: Operations, client_id: str) -> BudgetState | None:
    try:
        return await ops.budget(client_id)
    except NotFoundError:
        return None


@page
async def client_page(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    return await _client_page(request, dash, session)


@page
async def save_limits(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    client_id = request.match_info["client_id"]
    form = await form_fields(request)
    try:
        await dash.ops.set_limits(client_id, parse_limits_form(form))
    except (InvalidInput, ConflictError) as exc:
        rows = rows_from_form(form)
        errors = {exc.param or "limits": exc.message}
        return await _client_page(request, dash, session, status=422, errors=errors, limit_rows=rows)
    return redirect(f"/dashboard/clients/{client_id}?done=limits")


@page
async def save_budget(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    client_id = request.match_info["client_id"]
    form = await form_fields(request)
    body, errors = parse_budget_form(form)
    if not errors:
        try:
            await dash.ops.put_budget(client_id, body)
        except InvalidInput as exc:
            errors[exc.param or "mode"] = exc.message
    if errors:
        return await _client_page(request, dash, session, status=422, values=form, errors=errors)
    return redirect(f"/dashboard/clients/{client_id}?done=budget")


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
    return redirect(f"/dashboard/clients/{client_id}?done={done}")


@page
async def create_portal_link(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    form = await form_fields(request)
    text = form.get("expires_in_s", "")
    seconds: object = int(text) if text.isascii() and text.isdecimal() and len(text) < 12 else text
    client_id = request.match_info["client_id"]
    url, expires_at = await dash.ops.portal_link(client_id, {"expires_in_s": seconds}, public_base(request))
    fmt = await formatter(request)
    # Shown on this response only, like a new key: the page is not cached.
    shown = (url, fmt.when(expires_at, "UTC"))
    return await _client_page(request, dash, session, status=201, portal_link=shown)


@page
async def revoke_portal_links(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    client_id = request.match_info["client_id"]
    await dash.ops.revoke_portal_links(client_id)
    return redirect(f"/dashboard/clients/{client_id}?done=portal-revoked#portal")


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
    return redirect(f"/dashboard/clients/{client_id}?done=revoked")
