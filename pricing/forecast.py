"""Where a budget or limit is heading (pure): what it will have used when its
period ends at the burn rate so far, and, when that passes its limit, when it
will run out (spec section 8). A rate read from too short a start (under an
hour, and under a twentieth of the period) says nothing yet: no forecast."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from taximeter.pricing.budgets import cost_limit, next_reset
from taximeter.pricing.models import BudgetState
from taximeter.pricing.money import from_nanos, quantize

__all__ = ["BudgetForecast", "Projection", "budget_forecast", "project"]

_MIN_ELAPSED = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Projection:
    """One metric's course: used when the period ends, and when it runs out
    of ``limit`` before that (None: it lasts, or has no limit)."""

    at_end: Decimal
    runs_out_at: datetime | None


def project(
    used: Decimal, limit: Decimal | None, start: datetime, end: datetime, now: datetime
) -> Projection | None:
    """``used`` since ``start``, carried on at the same rate to ``end``."""
    if now >= end or now <= start:
        return None
    elapsed = now - start
    if elapsed < max(_MIN_ELAPSED, (end - start) / 20):
        return None
    so_far = Decimal(str(elapsed.total_seconds()))
    at_end = (
        used * Decimal(str((end - start).total_seconds())) / so_far
    )  # one division: exact where it can be
    runs_out = None
    if limit is not None and used > 0 and at_end > limit:
        seconds_left = max((limit - used) * so_far / used, Decimal(0))
        runs_out = now + timedelta(seconds=float(seconds_left))
    return Projection(at_end, runs_out)


@dataclass(frozen=True, slots=True)
class BudgetForecast:
    """A budget's forecast: tokens and cost (its currency) at the period's
    end, and the first time it runs out of either, if before the end."""

    tokens_at_end: int | None
    cost_at_end: Decimal | None
    runs_out_at: datetime | None


def budget_forecast(state: BudgetState, now: datetime) -> BudgetForecast | None:
    """None for a budget without an end (period ``none``) or too young to say."""
    end = next_reset(state)
    if end is None:
        return None
    config = state.config
    start = state.period_start
    tokens = None
    if config.mode in ("tokens", "both"):
        limit = None if config.token_limit is None else Decimal(config.token_limit)
        tokens = project(Decimal(state.tokens_used), limit, start, end, now)
    cost = None
    if config.mode in ("cost", "both"):
        cost = project(from_nanos(state.cost_used_nanos), cost_limit(state), start, end, now)
    if tokens is None and cost is None:
        return None
    outs = [p.runs_out_at for p in (tokens, cost) if p is not None and p.runs_out_at is not None]
    return BudgetForecast(
        tokens_at_end=None if tokens is None else int(tokens.at_end),
        cost_at_end=None if cost is None else quantize(cost.at_end),
        runs_out_at=min(outs) if outs else None,
    )
