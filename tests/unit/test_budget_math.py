"""Budget math, pure: periods in local time (DST-safe), pauses, levels, input."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from taximeter.pricing.budgets import (
    BudgetInputError,
    apply_usage,
    config_from_json,
    level,
    next_reset,
    percents,
    period_bounds,
    refusal,
    reset,
    roll,
)
from taximeter.pricing.models import BudgetState
from tests.support.factories import budget_state


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "tz", "now", "start", "end"),
    [
        ("daily", "UTC", utc(2026, 3, 10, 15), utc(2026, 3, 10), utc(2026, 3, 11)),
        ("daily", "America/Sao_Paulo", utc(2026, 3, 10, 2), utc(2026, 3, 9, 3), utc(2026, 3, 10, 3)),
        # New York springs forward on 8 March 2026: that day has 23 hours.
        ("daily", "America/New_York", utc(2026, 3, 8, 12), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)),
        # ... and falls back on 1 November: 25 hours.
        ("daily", "America/New_York", utc(2026, 11, 1, 12), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)),
        ("weekly", "UTC", utc(2026, 3, 12, 9), utc(2026, 3, 9), utc(2026, 3, 16)),  # Monday to Monday
        ("weekly", "Asia/Tokyo", utc(2026, 3, 15, 16), utc(2026, 3, 15, 15), utc(2026, 3, 22, 15)),
        ("monthly", "UTC", utc(2026, 12, 31, 23), utc(2026, 12, 1), utc(2027, 1, 1)),
        ("monthly", "Europe/Berlin", utc(2026, 3, 31, 22, 30), utc(2026, 3, 31, 22), utc(2026, 4, 30, 22)),
        ("monthly", "UTC", utc(2028, 2, 29, 12), utc(2028, 2, 1), utc(2028, 3, 1)),
    ],
)
def test_period_bounds(period: str, tz: str, now: datetime, start: datetime, end: datetime) -> None:
    assert period_bounds(period, tz, now) == (start, end)


def test_lifetime_budget_never_resets() -> None:
    assert period_bounds("none", "UTC", utc(2026, 1, 1))[1] is None


def state(
    mode: str = "both", tokens: int | None = 100, cost: str | None = "1", pause: bool = True
) -> BudgetState:
    """A daily UTC budget starting on 10 March 2026, unspent."""
    limit = None if cost is None else Decimal(cost)
    return budget_state(mode=mode, token_limit=tokens, cost_limit=limit, pause_at_limit=pause)


def test_apply_usage_pauses_on_the_metric_that_crosses() -> None:
    s = apply_usage(state(), 99, 0)
    assert not s.paused and refusal(s) is None
    s = apply_usage(s, 1, 0)
    assert (s.paused, s.pause_reason, refusal(s)) == (True, "token_limit", "token_limit")
    c = apply_usage(state(tokens=None, mode="cost"), 10**6, 10**9)
    assert c.pause_reason == "cost_limit"


def test_inactive_metric_never_pauses() -> None:
    assert not apply_usage(state(mode="cost", cost="5"), 10**9, 0).paused
    assert not apply_usage(state(mode="tokens"), 0, 10**12).paused


def test_roll_clears_limit_pause_but_not_manual() -> None:
    paused = apply_usage(state(), 100, 0)
    rolled = roll(paused, utc(2026, 3, 11, 0, 0, 1))
    assert (rolled.tokens_used, rolled.paused, rolled.period_start) == (0, False, utc(2026, 3, 11))
    assert roll(paused, utc(2026, 3, 10, 23, 59)) is paused
    manual = reset(
        budget_state(state().config, paused=True, pause_reason="manual"),
        utc(2026, 3, 11),
    )
    assert manual.paused and manual.pause_reason == "manual"
    assert next_reset(rolled) == utc(2026, 3, 12)


@pytest.mark.parametrize(
    ("used", "expected"),
    [
        (0, "ok"),
        (79, "ok"),
        (80, "warning"),
        (89, "warning"),
        (90, "critical"),
        (99, "critical"),
        (100, "exceeded"),
        (250, "exceeded"),
    ],
)
def test_levels(used: int, expected: str) -> None:
    assert level(budget_state(state(cost="1000").config, tokens_used=used)) == expected


def test_percents_use_the_highest_active_metric() -> None:
    s = budget_state(state(cost="2").config, tokens_used=10, cost_used_nanos=1_700_000_000)
    assert percents(s) == (10.0, 85.0) and level(s) == "warning"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "dollars"}, "mode"),
        ({"mode": "tokens"}, "token_limit"),
        ({"mode": "tokens", "token_limit": -5}, "token_limit"),
        ({"mode": "tokens", "token_limit": 1.5}, "token_limit"),
        ({"mode": "cost"}, "cost_limit"),
        ({"mode": "cost", "cost_limit": "lots"}, "cost_limit"),
        ({"mode": "cost", "cost_limit": 0}, "cost_limit"),
        ({"mode": "both", "token_limit": 5, "cost_limit": "1", "period": "hourly"}, "period"),
        ({"mode": "tokens", "token_limit": 5, "timezone": "Mars/Olympus"}, "timezone"),
        ({"mode": "tokens", "token_limit": 5, "pause_at_limit": "yes"}, "pause_at_limit"),
        ({"mode": "tokens", "token_limit": 5, "alert_thresholds": [0.5, 1.5]}, "alert_thresholds"),
        ({"mode": "tokens", "token_limit": 5, "limit": 3}, "limit"),
        ({"mode": {"tokens": 1}}, "mode"),  # was a TypeError (a 500), found by schemathesis
        ({"mode": "tokens", "token_limit": 5, "timezone": {}}, "timezone"),  # was the default
        ({"mode": "tokens", "token_limit": 2**63}, "token_limit"),  # more than a store holds
        ({"mode": "cost", "cost_limit": "1e10"}, "cost_limit"),  # was a 500 (nanos overflow)
        ({"mode": "cost", "cost_limit": "1e400"}, "cost_limit"),
    ],
)
def test_bad_budget_input_names_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(BudgetInputError) as caught:
        config_from_json("acme", body, timezone="UTC", currency="BRL")
    assert caught.value.field == field


def test_a_whole_float_is_a_token_limit() -> None:
    """2.0 is an integer in JSON Schema, so the document allows it: so does the server."""
    config = config_from_json("acme", {"mode": "tokens", "token_limit": 2.0}, timezone="UTC", currency="BRL")
    assert config.token_limit == 2 and isinstance(config.token_limit, int)


def test_brl_is_an_alias_of_cost_and_money_may_be_a_number() -> None:
    config = config_from_json(
        "acme",
        {"mode": "brl", "cost_limit": 12.5, "token_limit": 7},
        timezone="America/Sao_Paulo",
        currency="BRL",
    )
    assert (config.mode, config.cost_limit, config.token_limit, config.timezone) == (
        "cost",
        Decimal("12.5"),
        None,
        "America/Sao_Paulo",
    )
