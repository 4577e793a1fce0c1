"""What the dashboard shows, pure: locale formats, cards, the budget form, charts."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from taximeter.pricing.budgets import urgency
from taximeter.pricing.models import BudgetState
from taximeter.proxy.dashboard.budget_form import form_from_state, parse_budget_form
from taximeter.proxy.dashboard.cards import build_card, order_clients
from taximeter.proxy.dashboard.charts import bar_list, column_chart
from taximeter.proxy.dashboard.formatting import Formatter, locale_for
from tests.support.factories import T0, budget_state, client

NBSP = "\u00a0"
PT = Formatter("pt_BR")


def plain(text: str) -> str:
    return text.replace(NBSP, " ")


def state(
    *, tokens: int = 0, cost: str = "0", token_limit: int | None = 50_000, cost_limit: str | None = "500"
) -> BudgetState:
    mode = "both" if token_limit and cost_limit else ("tokens" if token_limit else "cost")
    return budget_state(
        mode=mode,
        period="monthly",
        timezone="America/Sao_Paulo",
        token_limit=token_limit,
        cost_limit=None if cost_limit is None else Decimal(cost_limit),
        period_start=T0,
        tokens_used=tokens,
        cost_used_nanos=int(Decimal(cost) * 10**9),
    )


@pytest.mark.parametrize(
    ("locale", "amount", "currency", "shown"),
    [
        ("pt_BR", "450", "BRL", "R$ 450,00"),
        ("pt_BR", "1234567.5", "BRL", "R$ 1.234.567,50"),
        ("en_US", "1234.5", "USD", "$1,234.50"),
        ("de_DE", "3.5", "EUR", "3,50 €"),
    ],
)
def test_money_is_written_as_its_locale_writes_it(
    locale: str, amount: str, currency: str, shown: str
) -> None:
    assert plain(Formatter(locale).money(Decimal(amount), currency)) == shown


def test_one_calls_cost_keeps_every_digit() -> None:
    assert plain(PT.money_exact(Decimal("0.000125"), "BRL")) == "R$ 0,000125"
    assert plain(Formatter("en_US").money_exact(Decimal("0.02625"), "USD")) == "$0.02625"


def test_numbers_percents_and_times_follow_the_locale() -> None:
    assert PT.number(1_234_567) == "1.234.567"
    assert Formatter("en_US").number(1_234_567) == "1,234,567"
    assert PT.percent(85.0) == "85,0%"
    # Midnight of Dec 1 in São Paulo is 03:00 UTC.
    assert PT.when(datetime(2026, 12, 1, 3, tzinfo=UTC), "America/Sao_Paulo") == (
        "01/12/2026 00:00 (America/Sao_Paulo)"
    )


def test_a_currency_brings_its_usual_locale_unless_one_is_set() -> None:
    assert locale_for("BRL") == "pt_BR"
    assert locale_for("usd") == "en_US"
    assert locale_for("XYZ") == "en_US"
    assert locale_for("BRL", "en_GB") == "en_GB"


def test_a_card_has_a_bar_per_limit_in_its_units_with_the_level_of_each() -> None:
    card = build_card(client("acme"), state(tokens=12_500, cost="450"), {}, PT, "BRL")
    tokens, cost = card.bars
    assert (tokens.used, tokens.limit, tokens.percent_text, tokens.level) == (
        "12.500",
        "50.000",
        "25,0%",
        "ok",
    )
    assert plain(f"{cost.used} / {cost.limit}") == "R$ 450,00 / R$ 500,00"
    assert (cost.percent_text, cost.level) == ("90,0%", "critical")
    assert card.level == "critical"  # the highest metric's
    assert card.next_reset == "01/04/2026 00:00 (America/Sao_Paulo)"


@pytest.mark.parametrize(
    ("tokens", "level", "width"),
    [
        (0, "ok", 0.0),
        (39_999, "ok", 79.998),
        (39_996, "ok", 79.992),
        (40_000, "warning", 80.0),
        (45_000, "critical", 90.0),
        (50_000, "exceeded", 100.0),
        (75_000, "exceeded", 100.0),
    ],
)
def test_levels_change_at_80_90_and_100_percent(tokens: int, level: str, width: float) -> None:
    card = build_card(client("a"), state(tokens=tokens, cost_limit=None), {}, PT, "BRL")
    assert card.level == level
    assert card.bars[0].width == pytest.approx(width)


def test_a_card_lists_spend_for_every_api_type_and_any_other() -> None:
    spend = {"chat": Decimal("12.5"), "image": Decimal("0.2"), "moderation": Decimal("1")}
    card = build_card(client("a"), None, spend, PT, "BRL")
    assert not card.has_budget and card.bars == ()
    shown = {kind: plain(text) for kind, text in card.spend}
    assert list(shown) == ["chat", "vision", "tts", "whisper", "embeddings", "image", "moderation"]
    assert shown["chat"] == "R$ 12,50" and shown["tts"] == "R$ 0,00"


def test_clients_closest_to_a_limit_come_first_and_filter_by_name() -> None:
    def budget(cid: str, tokens: int, paused: bool = False, tokens_limit: int = 50_000) -> BudgetState:
        s = state(tokens=tokens, cost_limit=None)
        config = replace(s.config, client_id=cid, token_limit=tokens_limit)
        return budget_state(config, period_start=T0, tokens_used=tokens, paused=paused, pause_reason="manual")

    clients = [
        client("low", "Low Co"),
        client("none", "No Budget"),
        client("high", "High Co"),
        client("stop", "Stopped"),
        client("mid", "Mid Co"),
        client("twin-b", "Twin"),
        client("twin-a", "Twin"),
    ]
    states = {
        s.client_id: s
        for s in (
            budget("low", 1_000),
            budget("high", 47_000),
            budget("stop", 10, paused=True),
            budget("mid", 30_000),
            budget("twin-b", 500),
            budget("twin-a", 5, tokens_limit=500),  # 1% of its limit, as twin-b
        )
    }
    standings = [(c.id, c.name, None if (s := states.get(c.id)) is None else urgency(s)) for c in clients]

    def ids(query: str = "") -> list[str]:
        return [client_id for client_id, _, _ in order_clients(standings, query)]

    assert ids() == ["stop", "high", "mid", "low", "twin-a", "twin-b", "none"]
    assert ids("zzz") == []
    assert ids("CO") == ["high", "mid", "low"]
    assert ids("stop") == ["stop"]
    assert ids("TWIN-b") == ["twin-b"]  # ids match too


def test_the_budget_form_reads_either_number_convention() -> None:
    body, errors = parse_budget_form(
        {
            "mode": "both",
            "token_limit": "1.000.000",
            "cost_limit": "1.250,50",
            "period": "weekly",
            "timezone": "America/Sao_Paulo",
            "pause_at_limit": "on",
            "alert_thresholds": "50, 75; 100",
        }
    )
    assert errors == {}
    assert body == {
        "mode": "both",
        "token_limit": 1_000_000,
        "cost_limit": "1250.50",
        "period": "weekly",
        "timezone": "America/Sao_Paulo",
        "pause_at_limit": True,
        "alert_thresholds": ["0.5", "0.75", "1"],
    }
    assert parse_budget_form({"mode": "cost", "cost_limit": "1,250.50"})[0]["cost_limit"] == "1250.50"
    assert parse_budget_form({"mode": "cost", "cost_limit": "450"})[0]["pause_at_limit"] is False


def test_the_budget_form_names_every_bad_field() -> None:
    _, errors = parse_budget_form(
        {
            "mode": "both",
            "token_limit": "lots",
            "cost_limit": "-1",
            "timezone": "Mars/Olympus",
            "alert_thresholds": "80, 190",
        }
    )
    assert set(errors) == {"token_limit", "cost_limit", "timezone", "alert_thresholds"}
    assert "percent" in errors["alert_thresholds"]
    assert parse_budget_form({"mode": "tokens"})[1] == {"token_limit": "required for this mode"}
    assert set(parse_budget_form({"mode": "dollars"})[1]) == {"mode"}
    # A limit the mode does not use is ignored, even unreadable.
    assert parse_budget_form({"mode": "tokens", "token_limit": "5", "cost_limit": "abc"}) == (
        {"mode": "tokens", "token_limit": 5, "pause_at_limit": False},
        {},
    )


def test_the_form_shows_a_budget_as_it_was_entered() -> None:
    values = form_from_state(state(token_limit=1000, cost_limit="450.5"), "UTC")
    assert values["token_limit"] == "1000" and values["cost_limit"] == "450.50"
    assert values["alert_thresholds"] == "80, 90, 100"
    assert values["timezone"] == "America/Sao_Paulo"
    assert form_from_state(state(cost_limit="0.125000000"), "UTC")["cost_limit"] == "0.125"
    body, errors = parse_budget_form(values)
    assert errors == {} and body["token_limit"] == 1000 and body["pause_at_limit"] is True


def test_a_column_chart_stacks_each_day_in_proportion_and_escapes_its_labels() -> None:
    svg = str(
        column_chart(
            [
                ("day <1>", [("chat", Decimal("6")), ("tts", Decimal("4"))]),
                ("day 2", [("chat", Decimal("5")), ("tts", Decimal("0"))]),
                ("day 3", [("chat", Decimal("0")), ("tts", Decimal("0"))]),
            ],
            label=lambda v: f"R$ {v}",
            title="Spend & more",
            most="máx.",
        )
    )
    chat = [float(h) for h in re.findall(r'class="column series-chat"[^>]*height="([\d.]+)"', svg)]
    tts = [float(h) for h in re.findall(r'class="column series-tts"[^>]*height="([\d.]+)"', svg)]
    assert len(chat) == 2 and len(tts) == 1  # an empty part draws nothing
    assert chat[0] + tts[0] == pytest.approx(2 * chat[1])  # day 1 (10) is twice day 2 (5)
    assert tts[0] == pytest.approx(chat[0] * 4 / 6)
    assert svg.count('class="stack"') == 3
    assert "day &lt;1&gt;" in svg and "<1>" not in svg and "Spend &amp; more" in svg
    assert "máx. R$ 10" in svg and "day &lt;1&gt; · tts: R$ 4" in svg
    assert "http" not in svg.replace("http://www.w3.org", "")  # nothing fetched


def test_a_bar_list_writes_each_value_beside_its_bar() -> None:
    svg = str(bar_list([("gpt-4o", Decimal("3")), ("tts-1", Decimal("1"))], label=str, title="By model"))
    widths = [float(w) for w in re.findall(r'class="bar-fill"[^>]*width="([\d.]+)"', svg)]
    assert widths[0] == pytest.approx(3 * widths[1], abs=0.2)
    assert ">gpt-4o<" in svg and ">3<" in svg
    assert "<rect" not in str(bar_list([], label=str, title="empty"))


def test_a_percent_just_under_a_level_never_reads_as_it() -> None:
    card = build_card(client("a"), state(tokens=39_999, cost_limit=None), {}, PT, "BRL")
    assert (card.bars[0].percent_text, card.level) == ("79,9%", "ok")
