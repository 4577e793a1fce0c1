"""Limits beside the budget (spec section 6b), through the SDK on both
backends: per end user, per window, per model, requests per minute and calls
in flight, all admitted with the budget in one step.

One chat call of the fake upstream: 1200 prompt tokens (200 cached) and 300
completion tokens = 1500 tokens; gpt-4o at $2.50 / $1.25 / $10 per 1M is
$0.00575, R$0.02875 at the harness's 5 BRL per USD."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import openai
import orjson
import pytest

from tests.support.clock import FakeClock
from tests.support.harness import Harness
from tests.support.waiting import eventually

CALL_TOKENS = 1_500
CALL_BRL = (1_000 * Decimal("2.50") + 200 * Decimal("1.25") + 300 * 10) / 1_000_000 * 5


async def chat(proxy: Harness, key: str, user: str | None = None, model: str = "gpt-4o") -> None:
    extra: dict[str, Any] = {} if user is None else {"user": user}
    await proxy.sdk(key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], **extra
    )


async def set_limits(proxy: Harness, client: str, *limits: dict[str, Any]) -> dict[str, Any]:
    status, body = await proxy.admin("PUT", f"/admin/clients/{client}/limits", {"limits": list(limits)})
    assert status == 200, body
    return dict(body)


async def refused(proxy: Harness, key: str, **kw: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await chat(proxy, key, **kw)
    return caught.value


async def test_one_end_user_stops_at_its_cap_while_the_others_go_on(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="100")
    cap = str(2 * CALL_BRL)  # two calls each
    await set_limits(
        proxy,
        "acme",
        {"name": "per-user", "metric": "cost", "limit": cap, "window": "daily", "per": "end_user"},
    )
    await chat(proxy, key, user="+5511900000001")
    await chat(proxy, key, user="+5511900000001")
    error = await refused(proxy, key, user="+5511900000001")
    assert (error.status_code, error.code) == (429, "budget_exceeded")
    assert isinstance(error.body, dict) and error.body["param"] == "per-user"
    assert error.response.headers["x-should-retry"] == "false"
    await chat(proxy, key, user="+5511900000002")  # phone B goes on
    await chat(proxy, key)  # so do calls without an end user
    _, shown = await proxy.admin("GET", "/admin/clients/acme/limits?end_user=%2B5511900000001")
    [limit] = shown["data"]
    assert (Decimal(limit["used"]), limit["reserved"], limit["remaining"]) == (2 * CALL_BRL, "0", "0")
    assert limit["resets_at"].endswith("T00:00:00Z")  # midnight in the server's timezone (UTC)
    await proxy.assert_ledger_matches_counters()


async def test_a_daily_and_a_monthly_limit_both_bind(proxy: Harness, clock: FakeClock) -> None:
    clock.set(datetime(2026, 3, 30, 12, 0, tzinfo=UTC))
    key = await proxy.new_client("acme")
    await set_limits(
        proxy,
        "acme",
        {"name": "day", "metric": "tokens", "limit": 2 * CALL_TOKENS, "window": "daily"},
        {"name": "month", "metric": "tokens", "limit": 3 * CALL_TOKENS, "window": "monthly"},
    )
    await chat(proxy, key)
    await chat(proxy, key)
    assert (await refused(proxy, key)).body["param"] == "day"  # type: ignore[index]
    clock.advance(days=1)  # the 31st: a new day, the same month
    await chat(proxy, key)
    assert (await refused(proxy, key)).body["param"] == "month"  # type: ignore[index]
    clock.advance(days=1)  # April: both start again
    await chat(proxy, key)


async def test_a_call_settled_while_the_gate_is_rebuilt_is_answered_once_its_usage_counts(
    proxy: Harness, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebuild of the gate's copy (every gate_refresh_s in the background, for
    # the in-process gate) applies the calls settled meanwhile once it has
    # loaded the copy; until then the gate holds such a call's reservation, its
    # estimate with 4,096 output tokens, where its 1,500 tokens belong. Answered
    # before that, the client's next call found the limit busy after one call.
    key = await proxy.new_client("acme")
    await set_limits(
        proxy, "acme", {"name": "day", "metric": "tokens", "limit": 3 * CALL_TOKENS, "window": "daily"}
    )
    await chat(proxy, key)  # the gate's copy and counter are loaded
    meter = proxy.services.meter
    reading, read = asyncio.Event(), asyncio.Event()
    from_store = meter._from_store

    async def slow_read(client_id: str, now: datetime) -> Any:
        reading.set()
        await read.wait()
        return await from_store(client_id, now)

    monkeypatch.setattr(meter, "_from_store", slow_read)
    rebuild = asyncio.create_task(meter.rebuild("acme", clock()))
    await reading.wait()
    second = asyncio.create_task(chat(proxy, key))
    await eventually(lambda: bool(meter._deferred.get("acme")), what="the second call settled")
    answered, _ = await asyncio.wait({second}, timeout=0.5)
    read.set()
    await asyncio.gather(rebuild, second)
    assert not answered, "answered while the gate still held its reservation"
    await chat(proxy, key)  # the third: 3,000 of 4,500 tokens used, none in flight
    assert (await refused(proxy, key)).body["param"] == "day"  # type: ignore[index]


async def test_requests_per_minute_answer_with_when_to_retry(proxy: Harness, clock: FakeClock) -> None:
    clock.set(datetime(2026, 3, 10, 15, 0, 20, tzinfo=UTC))
    key = await proxy.new_client("acme")
    await set_limits(proxy, "acme", {"name": "rpm", "metric": "requests", "limit": 3, "window": "minute"})
    for _ in range(3):
        await chat(proxy, key)
    error = await refused(proxy, key)
    assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "requests")
    headers = error.response.headers
    assert (headers["retry-after"], headers["x-should-retry"]) == ("40", "true")
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("3", "0")
    assert len(proxy.upstream.received) == 3
    clock.advance(seconds=40)  # the next minute
    await chat(proxy, key)


async def test_no_more_calls_are_in_flight_than_the_concurrency_limit(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await set_limits(proxy, "acme", {"name": "parallel", "metric": "concurrent", "limit": 2})

    async def call() -> str:
        try:
            await chat(proxy, key)
            return "served"
        except openai.RateLimitError as exc:
            assert exc.code == "rate_limit_exceeded" and exc.response.headers["retry-after"] == "1"
            return "refused"

    results = await proxy.in_flight_together(call() for _ in range(20))
    assert (results.count("served"), len(proxy.upstream.received)) == (2, 2)
    await chat(proxy, key)  # both ended: a slot is free again
    _, shown = await proxy.admin("GET", "/admin/clients/acme/limits")
    assert (shown["data"][0]["reserved"], shown["data"][0]["remaining"]) == (0, 2)


async def test_a_model_cap_binds_only_its_models(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await set_limits(
        proxy,
        "acme",
        {
            "name": "gpt4o",
            "metric": "tokens",
            "limit": CALL_TOKENS,
            "window": "monthly",
            "models": ["gpt-4o"],
        },
    )
    await chat(proxy, key)
    assert (await refused(proxy, key)).body["param"] == "gpt4o"  # type: ignore[index]
    await chat(proxy, key, model="gpt-4o-mini")
    await chat(proxy, key, model="gpt-4o-mini")


async def test_a_lost_counter_is_counted_again_from_the_ledger(proxy: Harness) -> None:
    """The gate's counters go (Redis flushed, the process restarted): a spend
    cap still binds, from what the ledger holds."""
    key = await proxy.new_client("acme")
    await set_limits(
        proxy, "acme", {"name": "day", "metric": "cost", "limit": str(2 * CALL_BRL), "window": "daily"}
    )
    await chat(proxy, key)
    await chat(proxy, key)
    await proxy.services.meter.ledger.flush()
    await forget_counters(proxy)
    assert (await refused(proxy, key)).body["param"] == "day"  # type: ignore[index]


async def test_the_usage_report_by_limit_sums_the_calls_each_covers(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.new_client("free")  # no limits: not in the report
    await set_limits(
        proxy,
        "acme",
        {"name": "mini", "metric": "tokens", "limit": 10**6, "window": "daily", "models": ["gpt-4o-mini*"]},
        {"name": "all", "metric": "requests", "limit": 1000, "window": "monthly"},
        {"name": "per-user", "metric": "cost", "limit": "100", "window": "daily", "per": "end_user"},
    )
    await chat(proxy, key, user="+5511900000001")
    await chat(proxy, key, user="+5511900000002", model="gpt-4o-mini")
    await chat(proxy, key)
    # gpt-4o-mini's list price: $0.15 in, $0.075 cached, $0.60 out per 1M (2026-11-25).
    mini_brl = (1_000 * Decimal("0.15") + 200 * Decimal("0.075") + 300 * Decimal("0.60")) / 1_000_000 * 5
    status, report = await proxy.admin("GET", "/admin/usage?client_id=acme&group_by=limit")
    assert (status, report["group_by"], report["currency"]) == (200, "limit", "BRL")
    rows = {r["key"]: r for r in report["data"]}
    assert list(rows) == ["mini", "all", "per-user"]  # as declared
    assert (rows["mini"]["requests"], Decimal(rows["mini"]["cost"])) == (1, mini_brl)
    assert (rows["all"]["requests"], Decimal(rows["all"]["cost"])) == (3, 2 * CALL_BRL + mini_brl)
    assert rows["per-user"]["requests"] == 3 and rows["per-user"]["input_tokens"] == 3 * 1_200
    status, every = await proxy.admin("GET", "/admin/usage?group_by=limit")
    assert [r["key"] for r in every["data"]] == ["acme/mini", "acme/all", "acme/per-user"]
    status, body = await proxy.admin("GET", "/admin/usage?client_id=nobody&group_by=limit")
    assert (status, body["error"]["code"]) == (404, "not_found")


async def forget_counters(proxy: Harness) -> None:
    gate: Any = proxy.services.meter.gate
    if hasattr(gate, "_counters"):
        gate._counters.clear()
        return
    redis = gate._redis
    keys = [k async for k in redis.scan_iter(match=f"{gate._keys.prefix}lim:*")]
    assert keys
    await redis.delete(*keys)


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        ({"name": "Bad Name", "metric": "tokens", "limit": 5}, "limits[0].name"),
        ({"name": "x", "metric": "euros", "limit": 5}, "limits[0].metric"),
        ({"name": "x", "metric": "tokens", "limit": 0}, "limits[0].limit"),
        ({"name": "x", "metric": "cost", "limit": "0.0000000001"}, "limits[0].limit"),
        ({"name": "x", "metric": "tokens", "limit": 5, "window": "fortnight"}, "limits[0].window"),
        ({"name": "x", "metric": "concurrent", "limit": 5, "window": "daily"}, "limits[0].window"),
        ({"name": "x", "metric": "tokens", "limit": 5, "per": "team"}, "limits[0].per"),
        ({"name": "x", "metric": "tokens", "limit": 5, "models": []}, "limits[0].models"),
    ],
)
async def test_bad_limits_name_their_field_and_change_nothing(
    proxy: Harness, limit: dict[str, Any], field: str
) -> None:
    await proxy.new_client("acme")
    await set_limits(proxy, "acme", {"name": "kept", "metric": "requests", "limit": 10, "window": "minute"})
    good = {"name": "ok", "metric": "tokens", "limit": 5}
    status, body = await proxy.admin("PUT", "/admin/clients/acme/limits", {"limits": [limit, good]})
    assert (status, body["error"]["param"]) == (422, field)
    _, shown = await proxy.admin("GET", "/admin/clients/acme/limits")
    assert [limit["name"] for limit in shown["data"]] == ["kept"]


async def test_two_limits_of_one_name_conflict(proxy: Harness) -> None:
    await proxy.new_client("acme")
    same = {"name": "x", "metric": "tokens", "limit": 5}
    status, body = await proxy.admin("PUT", "/admin/clients/acme/limits", {"limits": [same, same]})
    assert (status, body["error"]["param"]) == (409, "limits[1].name")


async def test_the_tenant_sees_its_limits_in_its_status(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=10 * CALL_TOKENS)
    await set_limits(proxy, "acme", {"name": "tpm", "metric": "tokens", "limit": 10_000, "window": "minute"})
    await chat(proxy, key)
    async with proxy.http.get(
        f"{proxy.url}/budget/status", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        body = await resp.json()
    [limit] = body["limits"]
    assert (limit["name"], limit["used"], limit["remaining"]) == ("tpm", CALL_TOKENS, 10_000 - CALL_TOKENS)


async def test_a_spend_caps_thresholds_fire_once_and_its_gauge_follows(proxy: Harness) -> None:
    """Ten calls against a daily cap of ten: 80%, 90% and 100% each fire once
    (a webhook event in the outbox, an alert counted), the gauge reads 1.0."""
    key = await proxy.new_client("acme")
    await set_limits(
        proxy, "acme", {"name": "day", "metric": "tokens", "limit": 10 * CALL_TOKENS, "window": "daily"}
    )
    for _ in range(10):
        await chat(proxy, key)
    store: Any = proxy.services.meter.store
    fired = [orjson.loads(item.payload) for item, _ in await store.list_alerts("acme")]
    assert [(a["type"], a["limit"], a["threshold"]) for a in fired] == [
        ("limit.threshold", "day", 0.8),
        ("limit.threshold", "day", 0.9),
        ("limit.threshold", "day", 1.0),
    ]
    assert fired[-1]["used"] == 10 * CALL_TOKENS and fired[-1]["resets_at"].endswith("T00:00:00Z")
    async with proxy.http.get(f"{proxy.url}/metrics") as resp:
        text = await resp.text()
    assert 'taximeter_limit_used_ratio{client="acme",limit="day"} 1.0' in text
    assert 'taximeter_alerts_total{client="acme",metric="limit:day",threshold="0.9"} 1.0' in text
