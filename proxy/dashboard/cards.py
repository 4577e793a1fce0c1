"""What a dashboard card shows of one client, computed from its budget (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from taximeter.pricing import budgets
from taximeter.pricing.forecast import BudgetForecast, budget_forecast
from taximeter.pricing.models import BudgetState, Client
from taximeter.pricing.money import from_nanos
from taximeter.proxy.dashboard.formatting import N_, Formatter

__all__ = [
    "API_TYPES",
    "METRICS",
    "WINDOWS",
    "Bar",
    "Card",
    "LimitRow",
    "Standing",
    "binding_bar",
    "build_card",
    "limit_rows",
    "order_clients",
]

# Every kind of call the proxy meters, in the order the cards list them.
API_TYPES = ("chat", "vision", "tts", "whisper", "embeddings", "image")
# Words a card shows, translated where shown.
PAUSE_REASONS = {
    budgets.MANUAL: N_("manual"),
    "token_limit": N_("token limit"),
    "cost_limit": N_("cost limit"),
}
METRICS = {
    "tokens": N_("tokens"),
    "cost": N_("cost"),
    "requests": N_("requests"),
    "concurrent": N_("calls at once"),
}
WINDOWS = {
    "minute": N_("per minute"),
    "hour": N_("per hour"),
    "daily": N_("daily"),
    "weekly": N_("weekly"),
    "monthly": N_("monthly"),
    "none": N_("lifetime"),
}


@dataclass(frozen=True)
class Bar:
    """One metric against its limit: "12.500 / 50.000 tokens", 25,0%."""

    label: str
    used: str
    limit: str
    percent: float
    percent_text: str
    level: str

    @property
    def width(self) -> float:
        """How much of the bar is filled, 0 to 100."""
        return max(0.0, min(100.0, self.percent))


@dataclass(frozen=True)
class Card:
    client_id: str
    name: str
    has_budget: bool
    mode: str | None = None
    period: str | None = None
    level: str = "ok"
    bars: tuple[Bar, ...] = ()
    paused: bool = False
    pause_reason: str | None = None
    next_reset: str | None = None
    spend: tuple[tuple[str, str], ...] = ()
    binding: Bar | None = None  # the limit beside the budget nearest to being reached
    forecast: str | None = None  # where it is heading at its burn rate so far
    runs_out: bool = False  # the forecast says a limit is reached before the period ends


def binding_bar(shown: list[dict[str, Any]], fmt: Formatter) -> Bar | None:
    """Of a client's limits as ``Operations.limits`` shows them, the one most
    used (what would refuse its calls first), as a bar."""
    best: tuple[float, dict[str, Any]] | None = None
    for limit in shown:
        percent = 100 * float(Decimal(str(limit["used"])) / Decimal(str(limit["limit"])))
        if best is None or percent > best[0]:
            best = (percent, limit)
    if best is None:
        return None
    percent, limit = best
    return Bar(
        label=fmt.gettext("limit %(name)s (%(window)s)")
        % {"name": limit["name"], "window": fmt.gettext(WINDOWS.get(limit["window"], limit["window"]))},
        used=str(limit["used"]),
        limit=str(limit["limit"]),
        percent=percent,
        percent_text=f"{percent:.0f}%",
        level=budgets.level_of(percent),
    )


@dataclass(frozen=True)
class LimitRow:
    """One limit as a table row shows it, every figure in the page's locale."""

    name: str
    counts: str  # what it counts, over which window, for whom
    used: str
    limit: str
    reserved: str
    remaining: str
    resets: str
    forecast: str | None
    runs_out: bool


def limit_rows(shown: list[dict[str, Any]], fmt: Formatter, currency: str, timezone: str) -> list[LimitRow]:
    """A client's limits as ``Operations.limits`` shows them, as rows."""
    rows = []
    for limit in shown:
        money = limit["metric"] == "cost"

        def figure(value: Any, money: bool = money) -> str:
            amount = Decimal(str(value))
            return fmt.money(amount, currency) if money else fmt.number(amount)

        metric = METRICS.get(limit["metric"], limit["metric"])
        window = WINDOWS.get(limit["window"], limit["window"])
        counts = [fmt.gettext(metric), fmt.gettext(window)]
        if limit.get("per") == "end_user":
            counts.append(fmt.gettext("per end user"))
        if limit.get("models"):
            counts.append(", ".join(limit["models"]))
        resets = limit.get("resets_at")
        forecast, runs_out = None, False
        course = limit.get("forecast")
        if course is not None:
            forecast = fmt.gettext("at this pace: %(amount)s by the window's end") % {
                "amount": figure(course["at_window_end"])
            }
            if course.get("runs_out_at"):
                runs_out = True
                when = fmt.when(datetime.fromisoformat(course["runs_out_at"]), timezone)
                forecast += " · " + fmt.gettext("runs out %(when)s") % {"when": when}
        rows.append(
            LimitRow(
                name=limit["name"],
                counts=" · ".join(counts),
                used=figure(limit["used"]),
                limit=figure(limit["limit"]),
                reserved=figure(limit["reserved"]),
                remaining=figure(limit["remaining"]),
                resets=fmt.gettext("never")
                if not resets
                else fmt.when(datetime.fromisoformat(resets), timezone),
                forecast=forecast,
                runs_out=runs_out,
            )
        )
    return rows


def build_card(
    client: Client,
    state: BudgetState | None,
    spend: dict[str, Decimal],
    fmt: Formatter,
    currency: str,
    now: datetime | None = None,
) -> Card:
    """The card of ``client``: its bars, level and pause from ``state`` (None:
    metered, no budget), and ``spend`` by api_type in the budget currency."""
    if state is not None:
        currency = state.config.currency
    kinds = API_TYPES + tuple(sorted(k for k in spend if k not in API_TYPES))
    spent = tuple((kind, fmt.money(spend.get(kind, Decimal(0)), currency)) for kind in kinds)
    if state is None:
        return Card(client.id, client.name, has_budget=False, spend=spent)
    bars = _bars(state, fmt)
    reset_at = budgets.next_reset(state)
    course = None if now is None else budget_forecast(state, now)
    return Card(
        client_id=client.id,
        name=client.name,
        has_budget=True,
        mode=state.config.mode,
        period=state.config.period,
        level=budgets.level(state),
        bars=bars,
        # Paused, or resumed while still at a limit: either way calls are refused.
        paused=budgets.refusal(state) is not None,
        pause_reason=_reason(budgets.refusal(state), fmt),
        next_reset=None if reset_at is None else fmt.when(reset_at, state.config.timezone),
        spend=spent,
        forecast=None if course is None else _forecast(state, course, fmt),
        runs_out=course is not None and course.runs_out_at is not None,
    )


def _reason(reason: str | None, fmt: Formatter) -> str | None:
    return None if reason is None else fmt.gettext(PAUSE_REASONS.get(reason, reason.replace("_", " ")))


def _forecast(state: BudgetState, course: BudgetForecast, fmt: Formatter) -> str:
    """At this pace: what the period ends at, and when it runs out if before."""
    parts = []
    if course.cost_at_end is not None:
        parts.append(fmt.money(course.cost_at_end, state.config.currency))
    if course.tokens_at_end is not None:
        parts.append(fmt.gettext("%(count)s tokens") % {"count": fmt.number(course.tokens_at_end)})
    said = fmt.gettext("at this pace: %(amount)s by the period's end") % {
        "amount": fmt.gettext(" and ").join(parts)
    }
    if course.runs_out_at is not None:
        when = fmt.when(course.runs_out_at, state.config.timezone)
        said += " · " + fmt.gettext("runs out %(when)s") % {"when": when}
    return said


def _bars(state: BudgetState, fmt: Formatter) -> tuple[Bar, ...]:
    config = state.config
    tokens_pct, cost_pct = budgets.percents(state, places=None)
    bars = []
    if tokens_pct is not None and config.token_limit is not None:
        used, limit = fmt.number(state.tokens_used), fmt.number(config.token_limit)
        bars.append(_bar(fmt.gettext("tokens"), used, limit, tokens_pct, fmt))
    if cost_pct is not None and config.cost_limit is not None:
        used = fmt.money(from_nanos(state.cost_used_nanos), config.currency)
        bars.append(
            _bar(fmt.gettext("cost"), used, fmt.money(config.cost_limit, config.currency), cost_pct, fmt)
        )
    return tuple(bars)


def _bar(label: str, used: str, limit: str, percent: float, fmt: Formatter) -> Bar:
    # The figure is rounded down to one decimal, so 79.99% never reads "80,0%" while still "ok".
    shown = math.floor(percent * 10) / 10
    return Bar(label, used, limit, percent, fmt.percent(shown), budgets.level_of(percent))


Standing = tuple[str, str, float | None]  # a client's id, name and urgency (None: no budget)


def order_clients(standings: list[Standing], query: str = "") -> list[Standing]:
    """Clients whose name or id contains ``query`` (any case), closest to a limit
    first (:func:`~taximeter.pricing.budgets.urgency`), clients without a
    budget last."""
    needle = query.strip().casefold()
    kept = [s for s in standings if needle in s[1].casefold() or needle in s[0].casefold()]
    return sorted(kept, key=lambda s: (s[2] is None, -(s[2] or 0.0), s[1].casefold(), s[0]))
