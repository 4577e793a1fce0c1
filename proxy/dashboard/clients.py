"""The dashboard's overview (one card per client) and each client's page,
with the forms that change a client: budget, reset, pause, resume, keys."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from aiohttp import web

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState, Client
from taximeter.proxy.dashboard.budget_form import form_from_state, parse_budget_form
from taximeter.proxy.dashboard.cards import Card, binding_bar, build_card, order_cards
from taximeter.proxy.dashboard.dashboard import Dashboard, form_fields, page, redirect
from taximeter.proxy.dashboard.limits_form import form_from_limits, parse_limits_form, rows_from_form
from taximeter.proxy.dashboard.sessions import Session
from taximeter.proxy.dashboard.usage import USAGE_DAYS
from taximeter.proxy.errors import ConflictError, InvalidInput, NotFoundError, TaximeterError
from taximeter.proxy.operations import Operations

__all__ = [
    "budget_action",
    "client_page",
    "create_client",
    "create_key",
    "overview",
    "revoke_key",
    "save_budget",
]

RECENT_EVENTS = 50
# What a redirect after an action says; only these fixed texts are shown.
DONE = {
    "budget": "Budget saved.",
    "limits": "Limits saved.",
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


async def _card(dash: Dashboard, client: Client, state: BudgetState | None) -> Card:
    """The client's card, with its spend this period (the last 30 days without a budget)."""
    ops = dash.ops
    since = state.period_start if state is not None else ops.clock() - timedelta(days=USAGE_DAYS)
    spend = await ops.spend_by_api_type(client.id, since)
    card = build_card(client, state, spend, dash.fmt, ops.currency, ops.clock())
    if client.terms.limits:
        card = replace(card, binding=binding_bar(await ops.limits(client.id)))
    return card


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
        limits=await ops.limits(client.id),
        limit_rows=limit_rows or form_from_limits(client.terms.limits),
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
