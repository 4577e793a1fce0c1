"""Money terms, pure: what an operator may set (section 6c), and what a
credit does to a budget's period."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from taximeter.pricing import budgets
from taximeter.pricing.budgets import BudgetInputError
from taximeter.pricing.charge import Tariff, price_of
from taximeter.pricing.models import BudgetConfig, Terms
from taximeter.pricing.money import to_nanos
from taximeter.pricing.terms import credit_from_json, rate_from_json, terms_from_json
from taximeter.pricing.usage import Usage

NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


def test_a_patch_changes_only_what_it_names_and_null_means_the_default() -> None:
    current = Terms(currency="EUR", markup=Decimal("1.2"), models_allowed=("gpt-4o",))
    name, terms = terms_from_json(current, {"markup": "1.5"})
    assert (name, terms) == (None, Terms("EUR", Decimal("1.5"), ("gpt-4o",)))
    _, back = terms_from_json(current, {"currency": None, "markup": None, "models_allowed": None})
    assert back == Terms()
    name, _ = terms_from_json(current, {"name": "  Acme  "})
    assert name == "Acme"
    _, deduped = terms_from_json(current, {"models_allowed": ["a*", "b", "a*"]})
    assert deduped.models_allowed == ("a*", "b")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.25", Decimal("1.25")),
        (2, Decimal(2)),
        (1.1, Decimal("1.1")),
        (0.1234567891, Decimal("0.123456789")),
    ],
)
def test_a_markup_is_exact(value: Any, expected: Decimal) -> None:
    """A string keeps every digit it has (nine places at most); a JSON number
    is binary already and is rounded to the ledger's nine places."""
    assert terms_from_json(Terms(), {"markup": value})[1].markup == expected


@pytest.mark.parametrize(
    ("parse", "body", "field"),
    [
        (rate_from_json, {"rate": "1.0000000001"}, "rate"),
        (rate_from_json, {"rate": 0.0000000001}, "rate"),  # rounds to zero
        (rate_from_json, {"rate": True}, "rate"),
        (rate_from_json, {"rate": "NaN"}, "rate"),
        (rate_from_json, ["5"], "body"),
        (credit_from_json, {"amount": "9000000001"}, "amount"),
        (credit_from_json, {"amount": "5", "note": "a\u2028b"}, "note"),
        (credit_from_json, {"amount": "5", "extra": 1}, "body"),
    ],
)
def test_bad_rates_and_credits_name_their_field(parse: Any, body: Any, field: str) -> None:
    with pytest.raises(BudgetInputError) as caught:
        parse(body)
    assert caught.value.field == field


def test_cost_is_list_price_times_rate_times_markup_rounded_once() -> None:
    """$0.000000333 x 3.3 x 1.5 = 0.00000164835: 0.000001648 rounded once (half
    even); rounding after the rate first (0.000001099 x 1.5) would give 0.000001649."""
    from taximeter.pricing.catalog import ModelPrice
    from taximeter.pricing.rates import Rates

    price = ModelPrice("m", "chat", Rates(input=Decimal("0.333")))  # $0.333 per 1M tokens
    charge = price_of(price, Usage(input_tokens=1), Tariff("BRL", Decimal("3.3"), Decimal("1.5")))
    assert charge.cost_usd == Decimal("0.000000333")
    assert charge.cost == Decimal("0.000001648")  # 0.00000164835, rounded once, half even
    assert charge.markup == Decimal("1.5")


def test_a_credit_lifts_a_limit_pause_for_its_period_only() -> None:
    config = BudgetConfig("acme", "cost", "monthly", "UTC", "BRL", cost_limit=Decimal(10))
    state = budgets.apply_usage(budgets.configure(None, config, NOW), 0, to_nanos(Decimal(10)))
    assert (state.paused, state.pause_reason) == (True, "cost_limit")
    credited = budgets.give_credit(state, Decimal(5))
    assert (credited.paused, budgets.cost_limit(credited)) == (False, Decimal(15))
    assert budgets.percents(credited) == (None, 66.67)
    assert not budgets.give_credit(state, Decimal("0.5")).paused  # 10 spent of 10.5
    manual = budgets.give_credit(replace(state, pause_reason="manual"), Decimal(5))
    assert manual.paused  # a manual pause stays
    next_month = budgets.roll(credited, datetime(2026, 4, 1, tzinfo=UTC))
    assert (next_month.credit_nanos, budgets.cost_limit(next_month)) == (0, Decimal(10))
    lifetime = budgets.configure(
        None, BudgetConfig("p", "cost", "none", "UTC", "BRL", cost_limit=Decimal(1)), NOW
    )
    topped = budgets.give_credit(lifetime, Decimal(100))
    assert budgets.roll(topped, datetime(2030, 1, 1, tzinfo=UTC)) is topped  # prepaid: credits never expire
