"""The tenant portal (``/portal/<token>``): one client's own page, read only.

A signed, expiring link (see :mod:`taximeter.proxy.portal_links`) is the
only way in: no session, no form, nothing that changes anything. It shows
the client's budget and limits with their forecasts, its spend over the last
30 days (per day stacked by api_type, by model, by end user) and its latest
calls, in its locale; never a key, another client or an operator's figure
(list price, markup). The operator's ``portal_frame_ancestors`` may frame it.
"""

from __future__ import annotations

from aiohttp import web

from taximeter.proxy.dashboard.cards import limit_rows
from taximeter.proxy.dashboard.clients import RECENT_EVENTS, client_card, client_timezone
from taximeter.proxy.dashboard.dashboard import DASHBOARD, formatter
from taximeter.proxy.dashboard.pages import portal_headers
from taximeter.proxy.dashboard.usage import usage_view

__all__ = ["portal"]


async def portal(request: web.Request) -> web.StreamResponse:
    dash = request.config_dict[DASHBOARD]
    ops = dash.ops
    client = await ops.portal_client(request.match_info["token"])
    currency = client.terms.currency or ops.currency
    fmt = await formatter(request, currency)
    state = await ops.find_budget(client.id)
    timezone = client_timezone(ops, client, state)
    if state is not None:
        currency = state.config.currency
    return dash.pages.render(
        "portal.html",
        fmt,
        headers=portal_headers(dash.frame_ancestors),
        session=None,
        client=client,
        card=await client_card(ops, fmt, client, state),
        limits=limit_rows(await ops.limits(client.id), fmt, currency, timezone),
        view=await usage_view(ops, fmt, client.id, billed_in=currency),
        events=await ops.events(client.id, RECENT_EVENTS),
        timezone=timezone,
    )
