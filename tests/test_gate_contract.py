"""One contract for every gate backend (in-process and Redis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from taximeter.store.base import Gate
from taximeter.store.budgets import period_bounds
from taximeter.store.models import BudgetConfig, BudgetState

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


def state(**overrides: object) -> BudgetState:
    config_values: dict[str, object] = {
        "client_id": "acme",
        "mode": "both",
        "period": "daily",
        "timezone": "UTC",
        "currency": "BRL",
        "token_limit": 1000,
        "cost_limit": Decimal("1.00"),
        "pause_at_limit": True,
    }
    state_values = {
        k: overrides.pop(k)
        for k in list(overrides)
        if k in ("tokens_used", "cost_used_nanos", "paused", "pause_reason")
    }
    config_values.update(overrides)
    config = BudgetConfig(**config_values)  # type: ignore[arg-type]
    start = period_bounds(config.period, config.timezone, T0)[0]
    return BudgetState(config=config, period_start=start, **state_values)  # type: ignore[arg-type]


async def test_unknown_client_is_a_miss(gate: Gate) -> None:
    assert (await gate.admit("acme", T0)).outcome == "miss"


async def test_no_budget_always_admits(gate: Gate) -> None:
    await gate.load("acme", None, T0)
    await gate.settle("acme", 10**9, 10**15, T0)
    assert (await gate.admit("acme", T0)).outcome == "ok"


async def test_settle_pauses_at_the_token_limit(gate: Gate) -> None:
    await gate.load("acme", state(mode="tokens", token_limit=300, cost_limit=None), T0)
    for _ in range(2):
        await gate.settle("acme", 100, 0, T0)
        assert (await gate.admit("acme", T0)).outcome == "ok"
    await gate.settle("acme", 100, 0, T0)
    admission = await gate.admit("acme", T0)
    assert (admission.outcome, admission.reason) == ("refused", "token_limit")


async def test_settle_pauses_at_the_cost_limit(gate: Gate) -> None:
    await gate.load("acme", state(mode="cost", token_limit=None, cost_limit=Decimal("0.000000003")), T0)
    await gate.settle("acme", 10**6, 2, T0)  # tokens do not count in cost mode
    assert (await gate.admit("acme", T0)).outcome == "ok"
    await gate.settle("acme", 0, 1, T0)
    admission = await gate.admit("acme", T0)
    assert (admission.outcome, admission.reason) == ("refused", "cost_limit")


async def test_soft_budget_is_never_refused_at_its_limit(gate: Gate) -> None:
    await gate.load("acme", state(pause_at_limit=False, tokens_used=5000), T0)
    await gate.settle("acme", 5000, 0, T0)
    assert (await gate.admit("acme", T0)).outcome == "ok"


async def test_paused_budget_is_refused_with_its_reason(gate: Gate) -> None:
    await gate.load("acme", state(paused=True, pause_reason="manual"), T0)
    admission = await gate.admit("acme", T0)
    assert (admission.outcome, admission.reason) == ("refused", "manual")


async def test_limit_already_reached_is_refused_without_a_pause(gate: Gate) -> None:
    await gate.load("acme", state(tokens_used=1000), T0)
    assert (await gate.admit("acme", T0)).reason == "token_limit"


async def test_end_of_period_is_a_miss_and_drops_late_settles(gate: Gate) -> None:
    await gate.load("acme", state(), T0)
    midnight = datetime(2026, 3, 11, tzinfo=UTC)
    assert (await gate.admit("acme", midnight - timedelta(milliseconds=1))).outcome == "ok"
    assert (await gate.admit("acme", midnight)).outcome == "miss"
    await gate.settle("acme", 10, 10, midnight)
    assert (await gate.admit("acme", T0)).outcome == "miss"  # the stale copy was dropped


async def test_load_replaces_and_forget_drops(gate: Gate) -> None:
    await gate.load("acme", state(paused=True, pause_reason="manual"), T0)
    await gate.load("acme", state(), T0)
    assert (await gate.admit("acme", T0)).outcome == "ok"
    await gate.forget("acme")
    assert (await gate.admit("acme", T0)).outcome == "miss"


async def test_redis_state_is_shared_between_instances(redis_prefix: str) -> None:
    from taximeter.store.redis_gate import RedisGate
    from tests.conftest import REDIS_URL

    one, two = (RedisGate.from_url(REDIS_URL, prefix=redis_prefix) for _ in range(2))
    try:
        await one.load("acme", state(), T0)
        await two.load("acme", state(paused=True, pause_reason="manual"), T0)
        assert (await one.admit("acme", T0)).reason == "manual"
        await two.settle("acme", 1, 0, T0)
        await two.load("acme", state(tokens_used=999), T0)
        await one.settle("acme", 1, 0, T0)
        assert (await two.admit("acme", T0)).reason == "token_limit"
    finally:
        await one.close()
        await two.close()


async def test_local_gate_reloads_after_its_max_age() -> None:
    from taximeter.store.local_gate import LocalGate

    local = LocalGate(max_age_s=2)
    await local.load("acme", state(), T0)
    assert (await local.admit("acme", T0 + timedelta(seconds=2))).outcome == "ok"
    assert (await local.admit("acme", T0 + timedelta(seconds=3))).outcome == "miss"
