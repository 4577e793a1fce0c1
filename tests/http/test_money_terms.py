"""Currency, markup, exchange rates and credits (spec section 6c), through the
SDK on both backends. Every expected amount is worked out here from gpt-4o's
list price ($2.50 in, $1.25 cached, $10 out per 1M; the fake upstream answers
1200 prompt tokens of which 200 cached, and 300 completion tokens). The
clock moves a second between steps, so "newest first" has one answer."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.support.clock import FakeClock
from tests.support.harness import Harness

M = Decimal(1_000_000)
# As tests/http/test_budgets_e2e.py counts one call: (1000 x 2.50 + 200 x 1.25 + 300 x 10) / 1M.
CALL_USD = (1_000 * Decimal("2.50") + 200 * Decimal("1.25") + 300 * 10) / M
FIRST_RATE = Decimal(5)  # the harness's exchange_rate setting, BRL per USD


def text(amount: Decimal) -> str:
    """An amount as the API writes it: 9 places at most, no trailing zeros."""
    rounded = amount.quantize(Decimal("0.000000001")).normalize()
    return format(rounded, "f") if rounded else "0"


async def chat(proxy: Harness, key: str, model: str = "gpt-4o") -> None:
    await proxy.sdk(key).chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])


async def tenant_status(proxy: Harness, key: str) -> dict[str, Any]:
    async with proxy.http.get(
        f"{proxy.url}/budget/status", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def test_a_new_rate_prices_the_calls_admitted_after_it(proxy: Harness, clock: FakeClock) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="100")
    await chat(proxy, key)
    clock.advance(seconds=1)
    status, rate = await proxy.admin("PUT", "/admin/rates/BRL", {"rate": "5.43"})
    assert (status, rate["currency"], rate["rate"]) == (200, "BRL", "5.43")
    await chat(proxy, key)
    oldest_first = list(reversed(await proxy.events("acme")))
    assert [(e["exchange_rate"], e["cost"]) for e in oldest_first] == [
        ("5", text(CALL_USD * FIRST_RATE)),
        ("5.43", text(CALL_USD * Decimal("5.43"))),
    ]
    assert all(e["cost_usd"] == text(CALL_USD) for e in oldest_first)
    assert Decimal((await proxy.status("acme"))["cost_used"]) == CALL_USD * (FIRST_RATE + Decimal("5.43"))
    await proxy.assert_ledger_matches_counters()
    clock.advance(seconds=1)
    status, second = await proxy.admin("PUT", "/admin/rates/BRL", {"rate": 5.5})  # a number is taken too
    assert (status, second["rate"]) == (200, "5.5")
    status, rates = await proxy.admin("GET", "/admin/rates")
    assert rates["current"]["BRL"]["rate"] == "5.5"
    assert [r["rate"] for r in rates["data"] if r["currency"] == "BRL"] == [
        "5.5",
        "5.43",
    ]  # history, newest first


async def test_a_markup_is_charged_and_reported_as_margin(proxy: Harness, clock: FakeClock) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="100")
    await chat(proxy, key)  # at list price
    clock.advance(seconds=1)
    status, client = await proxy.admin("PATCH", "/admin/clients/acme", {"markup": "1.25"})
    assert (status, client["markup"], client["currency"]) == (200, "1.25", "BRL")
    await chat(proxy, key)  # the next call already carries it (its key's terms are read anew)
    newest, oldest = await proxy.events("acme")
    list_brl = CALL_USD * FIRST_RATE
    assert (oldest["markup"], oldest["cost"]) == ("1", text(list_brl))
    assert (newest["markup"], newest["cost"]) == ("1.25", text(list_brl * Decimal("1.25")))
    status, report = await proxy.admin("GET", "/admin/usage?client_id=acme&group_by=model")
    [row] = report["data"]
    assert (row["cost_usd"], row["cost"]) == (text(2 * CALL_USD), text(list_brl * Decimal("2.25")))
    assert (row["list_cost"], row["margin"]) == (text(2 * list_brl), text(list_brl * Decimal("0.25")))
    assert Decimal((await proxy.status("acme"))["cost_used"]) == list_brl * Decimal("2.25")


async def test_a_client_pays_in_its_own_currency(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    status, body = await proxy.admin("PATCH", "/admin/clients/acme", {"currency": "EUR"})
    assert (status, body["error"]["param"]) == (409, "currency")  # no EUR rate yet
    status, _ = await proxy.admin("PUT", "/admin/rates/EUR", {"rate": "0.92"})
    assert status == 200
    status, client = await proxy.admin("PATCH", "/admin/clients/acme", {"currency": "EUR"})
    assert (status, client["currency"]) == (200, "EUR")
    await chat(proxy, key)
    [event] = await proxy.events("acme")
    assert (event["currency"], event["exchange_rate"]) == ("EUR", "0.92")
    assert event["cost"] == text(CALL_USD * Decimal("0.92"))
    # No budget: metered, never blocked, and its spend this month in its currency.
    status_body = await tenant_status(proxy, key)
    assert (status_body["mode"], status_body["currency"], status_body["paused"]) == (None, "EUR", False)
    assert status_body["cost_used"] == event["cost"] and status_body["tokens_used"] == 1_500
    assert status_body["spend_by_api_type"] == {"chat": event["cost"]}
    assert status_body["period_start"].endswith("-01T00:00:00Z")  # the calendar month (UTC setting)


async def test_reports_name_the_currency_their_costs_are_in(proxy: Harness, clock: FakeClock) -> None:
    euro_key, real_key = await proxy.new_client("euro"), await proxy.new_client("real")
    await proxy.admin("PUT", "/admin/rates/EUR", {"rate": "0.92"})
    await proxy.admin("PATCH", "/admin/clients/euro", {"currency": "EUR"})
    await chat(proxy, euro_key)
    await chat(proxy, real_key)
    status, euro = await proxy.admin("GET", "/admin/usage?client_id=euro&group_by=model")
    assert (status, euro["currency"]) == (200, "EUR")
    assert [(r["key"], r["cost"], r["currency"]) for r in euro["data"]] == [
        ("gpt-4o", text(CALL_USD * Decimal("0.92")), "EUR")
    ]
    # Over both clients the costs are in two currencies: never summed together.
    status, both = await proxy.admin("GET", "/admin/usage?group_by=model")
    assert (status, both["currency"]) == (200, None)
    assert [(r["key"], r["cost"], r["currency"]) for r in both["data"]] == [
        ("gpt-4o", text(CALL_USD * FIRST_RATE), "BRL"),
        ("gpt-4o", text(CALL_USD * Decimal("0.92")), "EUR"),
    ]
    status, nothing = await proxy.admin("GET", "/admin/usage?client_id=euro&from=2020-01-01&to=2020-01-02")
    assert (status, nothing["currency"], nothing["data"]) == (200, "EUR", [])


async def test_a_currency_cannot_change_under_money_counted_in_another(
    proxy: Harness, clock: FakeClock
) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="10")
    await proxy.admin("PUT", "/admin/rates/EUR", {"rate": "0.92"})
    await chat(proxy, key)
    status, body = await proxy.admin("PATCH", "/admin/clients/acme", {"currency": "EUR", "markup": "2"})
    assert (status, body["error"]["param"]) == (409, "currency")
    status, client = await proxy.admin("GET", "/admin/clients/acme")
    assert (client["currency"], client["markup"]) == ("BRL", "1")  # nothing half-written
    clock.advance(seconds=1)  # a reset comes after the calls it follows
    await proxy.admin("POST", "/admin/budgets/acme/reset")
    status, client = await proxy.admin("PATCH", "/admin/clients/acme", {"currency": "EUR"})
    assert status == 200 and (await proxy.status("acme"))["currency"] == "EUR"


async def test_a_credit_raises_this_periods_limit_and_lifts_the_pause(
    proxy: Harness, clock: FakeClock
) -> None:
    one_call = CALL_USD * FIRST_RATE
    key = await proxy.new_client("acme", mode="cost", cost_limit=text(one_call), period="monthly")
    await chat(proxy, key)
    with pytest.raises(openai.RateLimitError):
        await chat(proxy, key)
    status, given = await proxy.admin(
        "POST", "/admin/budgets/acme/credits", {"amount": text(2 * one_call), "note": "pix top-up"}
    )
    assert status == 201 and given["note"] == "pix top-up"
    budget = given["budget"]
    assert (budget["paused"], budget["cost_limit"], budget["credits"]) == (
        False,
        text(3 * one_call),
        text(2 * one_call),
    )
    await chat(proxy, key)
    await chat(proxy, key)
    with pytest.raises(openai.RateLimitError):
        await chat(proxy, key)
    await proxy.assert_ledger_matches_counters()
    status, listing = await proxy.admin("GET", "/admin/budgets/acme/credits")
    assert [(c["amount"], c["note"]) for c in listing["data"]] == [(text(2 * one_call), "pix top-up")]
    clock.advance(days=32)  # the next month: its limit is the budget's own again
    after = await proxy.status("acme")
    assert (after["cost_limit"], after["credits"], after["paused"]) == (text(one_call), "0", False)


async def test_a_credit_needs_a_budget_with_a_cost_limit(proxy: Harness) -> None:
    await proxy.new_client("acme")
    status, body = await proxy.admin("POST", "/admin/budgets/acme/credits", {"amount": "10"})
    assert status == 404
    await proxy.admin("PUT", "/admin/budgets/acme", {"mode": "tokens", "token_limit": 1000})
    status, body = await proxy.admin("POST", "/admin/budgets/acme/credits", {"amount": "10"})
    assert status == 409
    for bad, field in (({"amount": "0"}, "amount"), ({"amount": "1.0000000001"}, "amount"), ({}, "amount")):
        await proxy.admin("PUT", "/admin/budgets/acme", {"mode": "cost", "cost_limit": "1"})
        status, body = await proxy.admin("POST", "/admin/budgets/acme/credits", bad)
        assert (status, body["error"]["param"]) == (422, field)
    await proxy.admin("PUT", "/admin/budgets/acme", {"mode": "cost", "cost_limit": "8999999999"})
    status, body = await proxy.admin("POST", "/admin/budgets/acme/credits", {"amount": "2"})
    assert (status, body["error"]["param"]) == (409, "amount")  # past what every store holds
    status, listing = await proxy.admin("GET", "/admin/budgets/acme/credits")
    assert listing["data"] == []


async def test_a_client_calls_only_the_models_it_is_allowed(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    _, client = await proxy.admin(
        "PATCH", "/admin/clients/acme", {"models_allowed": ["gpt-4o-mini", "gpt-5*"]}
    )
    assert client["models_allowed"] == ["gpt-4o-mini", "gpt-5*"]
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await chat(proxy, key, "gpt-4o")
    assert caught.value.code == "model_not_allowed"
    assert proxy.upstream.received == []  # refused before anything went upstream
    await chat(proxy, key, "gpt-4o-mini")
    await chat(proxy, key, "gpt-5-mini")
    assert len(proxy.upstream.received) == 2
    await proxy.admin("PATCH", "/admin/clients/acme", {"models_allowed": None})
    await chat(proxy, key, "gpt-4o")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"currency": "brl"}, "currency"),
        ({"markup": "0"}, "markup"),
        ({"markup": "-1"}, "markup"),
        ({"markup": "101"}, "markup"),
        ({"models_allowed": []}, "models_allowed"),
        ({"models_allowed": ["gpt\n"]}, "models_allowed"),
        ({"name": "  "}, "name"),
        ({"color": "red"}, "color"),
    ],
)
async def test_bad_terms_name_their_field(proxy: Harness, body: dict[str, Any], field: str) -> None:
    await proxy.new_client("acme")
    status, answer = await proxy.admin("PATCH", "/admin/clients/acme", body)
    assert (status, answer["error"]["param"]) == (422, field)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/admin/rates/USD", {"rate": "2"}, "currency"),
        ("/admin/rates/brl", {"rate": "2"}, "currency"),
        ("/admin/rates/BRL", {"rate": "0"}, "rate"),
        ("/admin/rates/BRL", {"rate": "1e9"}, "rate"),
        ("/admin/rates/BRL", {}, "rate"),
    ],
)
async def test_bad_rates_name_their_field(
    proxy: Harness, path: str, body: dict[str, Any], field: str
) -> None:
    status, answer = await proxy.admin("PUT", path, body)
    assert (status, answer["error"]["param"]) == (422, field)
    status, rates = await proxy.admin("GET", "/admin/rates")
    assert rates["data"] == []
