"""Budgets enforced through the SDK: each mode pauses exactly at its limit, the
next call raises RateLimitError (budget_exceeded, not retried), soft budgets
never block, and periods reset at the boundary in the budget's timezone."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest

from tests.support.clock import FakeClock
from tests.support.fake_upstream import CHAT
from tests.support.harness import Harness

CALL_TOKENS = CHAT["prompt"] + CHAT["completion"]  # 1500 per chat call
# One gpt-4o call in BRL at 5.0 per USD: (1000 * 2.50 + 200 * 1.25 + 300 * 10.00) / 1M * 5
CALL_BRL = Decimal("0.02875")


async def chat(proxy: Harness, key: str) -> None:
    await proxy.sdk(key).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])


async def assert_refused(proxy: Harness, key: str) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await chat(proxy, key)
    assert caught.value.code == "budget_exceeded"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "insufficient_quota"


@pytest.mark.parametrize(
    ("budget", "calls_allowed", "reason"),
    [
        ({"mode": "tokens", "token_limit": 3 * CALL_TOKENS}, 3, "token_limit"),
        ({"mode": "tokens", "token_limit": 3 * CALL_TOKENS - 1}, 3, "token_limit"),
        ({"mode": "cost", "cost_limit": str(2 * CALL_BRL)}, 2, "cost_limit"),
        ({"mode": "brl", "cost_limit": 2 * float(CALL_BRL) + 0.001}, 3, "cost_limit"),
        ({"mode": "both", "token_limit": 10**9, "cost_limit": str(CALL_BRL)}, 1, "cost_limit"),
        ({"mode": "both", "token_limit": CALL_TOKENS, "cost_limit": "1000"}, 1, "token_limit"),
    ],
)
async def test_each_mode_pauses_when_its_limit_is_reached(
    proxy: Harness, budget: dict[str, object], calls_allowed: int, reason: str
) -> None:
    key = await proxy.new_client("acme", period="monthly", **budget)
    for _ in range(calls_allowed):
        await chat(proxy, key)
    await assert_refused(proxy, key)
    await assert_refused(proxy, key)
    status = await proxy.status("acme")
    assert (status["paused"], status["pause_reason"], status["level"]) == (True, reason, "exceeded")
    assert status["tokens_used"] == calls_allowed * CALL_TOKENS
    assert Decimal(status["cost_used"]) == calls_allowed * CALL_BRL
    assert len(await proxy.events("acme")) == calls_allowed  # refusals are not charged


async def test_soft_budget_never_blocks(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=CALL_TOKENS, pause_at_limit=False)
    for _ in range(3):
        await chat(proxy, key)
    status = await proxy.status("acme")
    assert (status["paused"], status["tokens_percent"], status["level"]) == (False, 300.0, "exceeded")


async def test_client_without_budget_is_metered_not_blocked(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    for _ in range(3):
        await chat(proxy, key)
    assert len(await proxy.events("acme")) == 3
    status, _ = await proxy.admin("GET", "/admin/budgets/acme")
    assert status == 404


async def test_pause_resume_and_raise_limit_via_admin(proxy: Harness, clock: FakeClock) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=10 * CALL_TOKENS)
    await chat(proxy, key)
    status, body = await proxy.admin("POST", "/admin/budgets/acme/pause")
    assert (status, body["paused"], body["pause_reason"]) == (200, True, "manual")
    await assert_refused(proxy, key)
    await proxy.admin("POST", "/admin/budgets/acme/resume")
    await chat(proxy, key)
    await proxy.admin("PUT", "/admin/budgets/acme", {"mode": "tokens", "token_limit": 2 * CALL_TOKENS})
    await assert_refused(proxy, key)  # already at the new, lower limit
    await proxy.admin("PUT", "/admin/budgets/acme", {"mode": "tokens", "token_limit": 3 * CALL_TOKENS})
    await chat(proxy, key)
    clock.advance(seconds=1)
    status, body = await proxy.admin("POST", "/admin/budgets/acme/reset")
    assert (body["tokens_used"], body["paused"]) == (0, False)
    assert body["period_start"] == clock.now.isoformat().replace("+00:00", "Z")
    await chat(proxy, key)


async def test_tenant_sees_its_own_budget(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="both", token_limit=4 * CALL_TOKENS, cost_limit="1.00")
    await chat(proxy, key)
    await chat(proxy, key)
    async with proxy.http.get(
        f"{proxy.url}/budget/status", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        body = await resp.json()
    assert (body["tokens_percent"], body["level"], body["currency"]) == (50.0, "ok", "BRL")
    assert Decimal(body["cost_used"]) == 2 * CALL_BRL and body["cost_percent"] == 5.75
    assert {k: Decimal(v) for k, v in body["spend_by_api_type"].items()} == {"chat": 2 * CALL_BRL}
    assert body["token_limit"] == 4 * CALL_TOKENS and body["cost_limit"] == "1"


@pytest.mark.parametrize(
    ("period", "timezone", "start", "before_reset", "after_reset"),
    [
        # Daily in São Paulo (UTC-3): local midnight is 03:00 UTC.
        (
            "daily",
            "America/Sao_Paulo",
            datetime(2026, 3, 10, 12, tzinfo=UTC),
            datetime(2026, 3, 11, 2, 59, tzinfo=UTC),
            datetime(2026, 3, 11, 3, 0, tzinfo=UTC),
        ),
        # Weekly resets on Monday: 2026-03-16 is a Monday; Tokyo is UTC+9.
        (
            "weekly",
            "Asia/Tokyo",
            datetime(2026, 3, 12, 12, tzinfo=UTC),
            datetime(2026, 3, 15, 14, 59, tzinfo=UTC),
            datetime(2026, 3, 15, 15, 0, tzinfo=UTC),
        ),
        # Monthly across the US DST change (8 March 2026): New York is UTC-4 on 1 April.
        (
            "monthly",
            "America/New_York",
            datetime(2026, 3, 2, 12, tzinfo=UTC),
            datetime(2026, 4, 1, 3, 59, tzinfo=UTC),
            datetime(2026, 4, 1, 4, 0, tzinfo=UTC),
        ),
    ],
)
async def test_period_resets_at_the_local_boundary(
    proxy: Harness,
    clock: FakeClock,
    period: str,
    timezone: str,
    start: datetime,
    before_reset: datetime,
    after_reset: datetime,
) -> None:
    clock.set(start)
    key = await proxy.new_client(
        "acme", mode="tokens", token_limit=CALL_TOKENS, period=period, timezone=timezone
    )
    await chat(proxy, key)
    await assert_refused(proxy, key)
    clock.set(before_reset)
    await assert_refused(proxy, key)
    clock.set(after_reset)
    await chat(proxy, key)
    status = await proxy.status("acme")
    assert status["tokens_used"] == CALL_TOKENS and status["period_start"] == after_reset.isoformat().replace(
        "+00:00", "Z"
    )
    await assert_refused(proxy, key)
