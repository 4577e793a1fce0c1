"""A batch's cost, read without servers: its estimate from the input file,
each output line's key and usage, the limits it holds (pricing/)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from taximeter.pricing import jsonl, limits
from taximeter.pricing.batch_cost import estimate_batch, one_line
from taximeter.pricing.batch_input import BatchInput, ModelLines
from taximeter.pricing.batch_output import BatchOutputReader, line_usage
from taximeter.pricing.catalog import ModelPrice
from taximeter.pricing.charge import Tariff
from taximeter.pricing.models import Hold, Limit, Reservation, UsageEvent
from taximeter.pricing.rates import Rates

M = Decimal(1_000_000)
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
# Prices of this test's own making: the arithmetic, not the catalog, is under test.
CHEAP = ModelPrice(
    "cheap",
    "chat",
    Rates(input=Decimal("1"), output=Decimal("2")),
    {"batch": Rates(input=Decimal("0.5"), output=Decimal("1"))},
)
DEAR = ModelPrice("dear", "chat", Rates(input=Decimal("10"), output=Decimal("40")))


def out_line(custom_id: object, status: int = 200, usage: dict[str, int] | None = None) -> bytes:
    body = {
        "model": "cheap",
        "usage": usage if usage is not None else {"prompt_tokens": 10, "completion_tokens": 5},
    }
    return orjson.dumps({"custom_id": custom_id, "response": {"status_code": status, "body": body}}) + b"\n"


def read_all(data: bytes, chunk: int = 7) -> list:
    reader = BatchOutputReader("output")
    lines = []
    for i in range(0, len(data), chunk):
        reader.feed(data[i : i + chunk])
        lines += reader.take()
    reader.end()
    return lines + reader.take()


def test_each_line_gets_a_key_unique_in_its_batch() -> None:
    weird = "x" * 100 + "/../é"
    data = out_line("a") + out_line("a") + out_line(weird) + out_line(None) + b"{broken\n" + out_line("b")
    keys = [line.key for line in read_all(data)]
    assert keys[0] == "a" and keys[1] == "a~output-2"  # a repeated custom_id is charged again
    assert keys[2].startswith("h-") and len(keys[2]) == 34  # a long or odd one, by its hash
    assert keys[3] == "output-4" and keys[4] == "output-5" and keys[5] == "b"
    assert read_all(data, chunk=1) == read_all(data, chunk=4096)  # the same however it streams
    assert len(set(keys)) == len(keys)


def test_a_line_too_long_to_read_is_charged_as_estimated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 200)
    lines = read_all(out_line("a") + b'{"custom_id": "' + b"z" * 500 + b'"}\n')
    assert [line.readable for line in lines] == [True, False]
    usage, status = line_usage("chat", lines[1])
    assert (usage.estimated, usage.service_tier, status) == (True, "batch", 0)


def test_line_usage_at_the_batch_tier_whatever_the_body_says() -> None:
    ok, refused, empty = read_all(out_line("a") + out_line("b", 400) + out_line("c", 200, usage={}))
    usage, status = line_usage("chat", ok)
    assert (usage.input_tokens, usage.output_tokens, usage.service_tier, status) == (10, 5, "batch", 200)
    usage, status = line_usage("chat", refused)  # refused: what its body reports, else nothing
    assert (usage.input_tokens, usage.estimated, status) == (10, False, 400)
    usage, status = line_usage("chat", empty)  # ran, but no usage: estimated (charged its estimate)
    assert usage.estimated and status == 200
    no_response = read_all(orjson.dumps({"custom_id": "d", "error": {"code": "x"}}) + b"\n")[0]
    usage, status = line_usage("chat", no_response)
    assert (usage.total_tokens, usage.estimated, status) == (0, False, 500)


def test_a_batch_is_estimated_at_its_models_batch_rates() -> None:
    read = BatchInput(
        lines=5,
        models={"cheap": ModelLines(3, 300, 3_000), "dear": ModelLines(2, 200, 1_001)},
        endpoints={"/v1/chat/completions"},
    )
    prices = {"cheap": CHEAP, "dear": DEAR}
    estimate = estimate_batch(read, prices, Tariff("BRL", Decimal("5"), Decimal("1.5")))
    cheap = (300 * Decimal("0.5") + 3_000 * Decimal("1")) / M  # the batch tier
    dear = (200 * Decimal("10") + 1_001 * Decimal("40")) / M  # no batch tier: standard
    assert estimate.cost_usd == cheap + dear
    assert estimate.cost == ((cheap + dear) * Decimal("7.5")).quantize(Decimal("1e-9"))
    assert (estimate.usage.input_tokens, estimate.usage.output_tokens) == (500, 4_001)
    assert estimate.per_model["cheap"] == (3, 3_300, int(cheap * Decimal("7.5") * 10**9))
    model, usage = one_line(read, prices, Tariff("USD", Decimal(1)))
    assert (model, usage.input_tokens, usage.output_tokens) == ("dear", 100, 501)  # rounded up


def test_a_batch_holds_its_spend_caps_only() -> None:
    caps = (
        Limit("daily", "cost", 10**9, "daily"),
        Limit("cheap-lines", "requests", 100, "monthly", models=("cheap",)),
        Limit("rpm", "requests", 60, "minute"),
        Limit("parallel", "concurrent", 4),
        Limit("dear-tokens", "tokens", 10**6, "daily", models=("dear",)),
    )
    per_model = {"cheap": (3, 3_300, 1_000), "dear": (2, 1_201, 5_000)}
    holds = limits.long_running_holds(caps, client_id="acme", models=per_model, timezone="UTC", now=NOW)
    assert {h.limit.name: h.amount for h in holds} == {"daily": 6_000, "cheap-lines": 3, "dear-tokens": 1_201}
    late = limits.late_holds(caps, client_id="acme", model="dear", timezone="UTC", now=NOW)
    assert {h.limit.name: h.amount for h in late} == {"daily": 0, "dear-tokens": 0}


def test_a_reservation_is_kept_whole() -> None:
    event = UsageEvent(
        "r1",
        "acme",
        "chat",
        "cheap",
        "/v1/chat/completions",
        0,
        NOW,
        "BRL",
        Decimal("5.1"),
        cost=Decimal("0.5"),
        input_tokens=3,
        estimated=True,
        batch_id=None,
    )
    limit = Limit("daily", "cost", 10**9, "daily", "end_user", ("gpt-*", "o3"))
    hold = Hold("{acme}:daily:abc:*:1", limit, 7, NOW, None, "u1")
    reservation = Reservation(event, 500_000_000, NOW, (hold,))
    assert Reservation.from_json(reservation.to_json()) == reservation
