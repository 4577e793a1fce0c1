"""What a dashboard card shows of one client, computed from its budget (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from taximeter.pricing import budgets
from taximeter.pricing.forecast import budget_forecast
from taximeter.pricing.models import BudgetState, Client
from taximeter.pricing.money import from_nanos
from taximeter.proxy.dashboard.formatting import Formatter

__all__ = ["API_TYPES", "Bar", "Card", "binding_bar", "build_card", "order_cards"]

# Every kind of call the proxy meters, in the order the cards list them.
API_TYPES = ("chat", "vision", "tts", "whisper", "embeddings", "image")


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
    highest_percent: float = 0.0
    bars: tuple[Bar, ...] = ()
    paused: bool = False
    pause_reason: str | None = None
    next_reset: str | None = None
    spend: tuple[tuple[str, str], ...] = ()
    binding: Bar | None = None  # the limit beside the budget nearest to being reached
    forecast: str | None = None  # where it is heading at its burn rate so far


def binding_bar(shown: list[dict[str, Any]]) -> Bar | None:
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
        label=f"limit {limit['name']} ({limit['window']})",
        used=str(limit["used"]),
        limit=str(limit["limit"]),
        percent=percent,
        percent_text=f"{percent:.0f}%",
        level=budgets.level_of(percent),
    )


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
    return Card(
        client_id=client.id,
        name=client.name,
        has_budget=True,
        mode=state.config.mode,
        period=state.config.period,
        level=budgets.level(state),
        highest_percent=max((bar.percent for bar in bars), default=0.0),
        bars=bars,
        # Paused, or resumed while still at a limit: either way calls are refused.
        paused=budgets.refusal(state) is not None,
        pause_reason=budgets.refusal(state),
        next_reset=None if reset_at is None else fmt.when(reset_at, state.config.timezone),
        spend=spent,
        forecast=None if now is None else _forecast(state, now, fmt),
    )


def _forecast(state: BudgetState, now: datetime, fmt: Formatter) -> str | None:
    """At this pace: what the period ends at, and when it runs out if before."""
    course = budget_forecast(state, now)
    if course is None:
        return None
    parts = []
    if course.cost_at_end is not None:
        parts.append(fmt.money(course.cost_at_end, state.config.currency))
    if course.tokens_at_end is not None:
        parts.append(f"{fmt.number(course.tokens_at_end)} tokens")
    said = f"at this pace: {' and '.join(parts)} by the period's end"
    if course.runs_out_at is not None:
        said += f" · runs out {fmt.when(course.runs_out_at, state.config.timezone)}"
    return said


def _bars(state: BudgetState, fmt: Formatter) -> tuple[Bar, ...]:
    config = state.config
    tokens_pct, cost_pct = budgets.percents(state, places=None)
    bars = []
    if tokens_pct is not None and config.token_limit is not None:
        used, limit = fmt.number(state.tokens_used), fmt.number(config.token_limit)
        bars.append(_bar("tokens", used, limit, tokens_pct, fmt))
    if cost_pct is not None and config.cost_limit is not None:
        used = fmt.money(from_nanos(state.cost_used_nanos), config.currency)
        bars.append(_bar("cost", used, fmt.money(config.cost_limit, config.currency), cost_pct, fmt))
    return tuple(bars)


def _bar(label: str, used: str, limit: str, percent: float, fmt: Formatter) -> Bar:
    # The figure is rounded down to one decimal, so 79.99% never reads "80,0%" while still "ok".
    shown = math.floor(percent * 10) / 10
    return Bar(label, used, limit, percent, fmt.percent(shown), budgets.level_of(percent))


def order_cards(cards: list[Card], query: str = "") -> list[Card]:
    """Cards whose name or id contains ``query`` (any case), closest to a limit
    first; a paused client counts as at its limit. Clients without a budget last."""
    needle = query.strip().casefold()
    kept = [c for c in cards if needle in c.name.casefold() or needle in c.client_id.casefold()]

    def closeness(card: Card) -> tuple[bool, float, str]:
        urgency = max(card.highest_percent, 100.0) if card.paused else card.highest_percent
        return (not card.has_budget, -urgency, card.name.casefold())

    return sorted(kept, key=closeness)
