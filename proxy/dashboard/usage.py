"""The dashboard's usage page: spend over the last 30 days, per day, by
model and by api_type, with charts; in the clients' currency, or in USD at
list price when the clients shown pay in several."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, timedelta
from decimal import Decimal

from aiohttp import web

from taximeter.proxy.dashboard.charts import bar_list, column_chart
from taximeter.proxy.dashboard.dashboard import Dashboard, page
from taximeter.proxy.dashboard.sessions import Session
from taximeter.proxy.errors import NotFoundError
from taximeter.store.base import ReportRow

__all__ = ["usage"]

USAGE_DAYS = 30


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
    reports = [(await ops.usage_report(client_id, start, end, g))[2] for g in ("day", "model", "api_type")]
    one = await ops.report_currency(client_id, [row for rows in reports for row in rows])
    currency = one or "USD"
    days, models, kinds = (_merged(rows, in_usd=one is None) for rows in reports)
    spent = {row.key: row.cost for row in days}
    daily = [(d.isoformat(), spent.get(d.isoformat(), Decimal(0))) for d in _days(first, USAGE_DAYS)]

    def money(amount: Decimal) -> str:
        return fmt.money(amount, currency)

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
        currency=currency,
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
