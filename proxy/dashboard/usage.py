"""Spend over the last 30 days: per day stacked by api_type, by model, by
api_type and by end user (the top 10), with charts; in the clients'
currency, or in USD at list price when the clients shown pay in several.
The dashboard's usage page shows it for every client or one; the tenant
portal for its own client."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal

from aiohttp import web
from markupsafe import Markup

from taximeter.pricing.times import utc_day_start
from taximeter.proxy.dashboard.cards import API_TYPES
from taximeter.proxy.dashboard.charts import bar_list, column_chart
from taximeter.proxy.dashboard.dashboard import Dashboard, formatter, page
from taximeter.proxy.dashboard.formatting import Formatter
from taximeter.proxy.dashboard.sessions import Session
from taximeter.proxy.errors import NotFoundError
from taximeter.proxy.operations import Operations
from taximeter.store.base import ReportRow

__all__ = ["TOP_END_USERS", "USAGE_DAYS", "UsageView", "usage", "usage_view"]

USAGE_DAYS = 30
TOP_END_USERS = 10


@dataclass(frozen=True)
class UsageView:
    start: str
    end: str
    currency: str
    total: str
    requests: int
    kinds_seen: tuple[str, ...]  # the api_types in the daily chart, bottom first (its legend)
    daily_chart: Markup
    model_chart: Markup
    kind_chart: Markup
    user_chart: Markup
    models: list[ReportRow]
    kinds: list[ReportRow]
    users: list[ReportRow]  # the top end users; the calls without one under ""
    left_out: int = 0  # calls billed in another currency, not shown (the portal)


async def usage_view(
    ops: Operations, fmt: Formatter, client_id: str | None, *, billed_in: str | None = None
) -> UsageView:
    """The last :data:`USAGE_DAYS` UTC days of ``client_id`` (None: every
    client). Operators see calls billed in several currencies at list price
    in USD; with ``billed_in`` (the tenant portal) only what was billed in
    that currency is shown, never a list price (``left_out`` counts the rest)."""
    today = utc_day_start(ops.clock())
    start_at = today - timedelta(days=USAGE_DAYS - 1)
    end_at = today + timedelta(days=1)
    first = start_at.date()
    groups = ("day_api_type", "model", "api_type")
    reports = [await ops.usage_rows(client_id, start_at, end_at, g) for g in groups]
    # Only the dearest end users: a tenant may have hundreds of thousands.
    reports.append(await ops.usage_rows(client_id, start_at, end_at, "end_user", top=4 * TOP_END_USERS))
    left_out = 0
    if billed_in is not None:
        left_out = sum(r.requests for r in reports[2] if r.currency != billed_in)
        reports = [[r for r in rows if r.currency == billed_in] for rows in reports]
        one: str | None = billed_in
    else:
        one = await ops.report_currency(client_id, [row for rows in reports for row in rows])
    currency = one or "USD"
    stacked, models, kinds, users = (_merged(rows, in_usd=one is None) for rows in reports)

    by_day: dict[str, dict[str, Decimal]] = {}
    for row in stacked:
        day, _, kind = row.key.partition("/")
        by_day.setdefault(day, {})[kind] = row.cost
    seen = {kind for spent in by_day.values() for kind in spent}
    order = tuple(k for k in API_TYPES if k in seen) + tuple(sorted(seen - set(API_TYPES)))
    days = [d.isoformat() for d in _days(first, USAGE_DAYS)]
    daily = [(d, [(k, by_day.get(d, {}).get(k, Decimal(0))) for k in order]) for d in days]

    def money(amount: Decimal) -> str:
        return fmt.money(amount, currency)

    by_cost = sorted(models, key=lambda r: r.cost, reverse=True)
    kinds_by_cost = sorted(kinds, key=lambda r: r.cost, reverse=True)
    top_users = sorted(users, key=lambda r: r.cost, reverse=True)[:TOP_END_USERS]
    no_user = fmt.gettext("(no end user)")
    span = {"start": first.isoformat(), "end": today.date().isoformat()}
    return UsageView(
        start=span["start"],
        end=span["end"],
        currency=currency,
        total=money(sum((r.cost for r in kinds), Decimal(0))),
        requests=sum(r.requests for r in kinds),
        kinds_seen=order,
        daily_chart=column_chart(
            daily,
            label=money,
            title=fmt.gettext("Spend per day by api_type, %(start)s to %(end)s (UTC)") % span,
            tick=lambda day: day[5:],
            most=fmt.gettext("max"),
        ),
        model_chart=bar_list([(r.key, r.cost) for r in by_cost], label=money, title=fmt.gettext("By model")),
        kind_chart=bar_list(
            [(r.key, r.cost) for r in kinds_by_cost], label=money, title=fmt.gettext("By api_type")
        ),
        user_chart=bar_list(
            [(r.key or no_user, r.cost) for r in top_users],
            label=money,
            title=fmt.gettext("By end user (top %(count)d)") % {"count": TOP_END_USERS},
        ),
        models=by_cost,
        kinds=kinds_by_cost,
        users=top_users,
        left_out=left_out,
    )


@page
async def usage(request: web.Request, dash: Dashboard, session: Session) -> web.StreamResponse:
    ops = dash.ops
    clients = await ops.clients()
    client_id = request.query.get("client_id") or None
    if client_id is not None and all(c.id != client_id for c in clients):
        raise NotFoundError(f"no client {client_id!r}")
    fmt = await formatter(request)
    return dash.pages.render(
        "usage.html",
        fmt,
        session=session,
        csrf=session.csrf,
        clients=clients,
        client_id=client_id,
        view=await usage_view(ops, fmt, client_id),
    )


def _merged(rows: list[ReportRow], *, in_usd: bool) -> list[ReportRow]:
    """One row per key: the rows' own cost when they are in one currency;
    when clients pay in several, every row at its list price in USD
    (``cost_usd``: no markup, no rate), so none is counted otherwise."""
    by_key: dict[str, list[ReportRow]] = {}
    for row in rows:
        if in_usd:
            row = replace(row, cost=row.cost_usd, list_cost=row.cost_usd, currency="USD")
        by_key.setdefault(row.key, []).append(row)
    return [ReportRow.total(key, same, same[0].currency) for key, same in by_key.items()]


def _days(first: date, count: int) -> list[date]:
    return [first + timedelta(days=i) for i in range(count)]
