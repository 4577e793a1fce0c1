"""One contract for every gate backend (in-process and Redis)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from taximeter.pricing.models import Reservation, UsageEvent
from taximeter.store.base import Gate
from taximeter.store.local_gate import LocalGate
from tests.support.factories import T0, budget_state, estimated_event, reservation


def event(
    tokens: int = 0, nanos: int = 0, request_id: str | None = None, client_id: str = "acme"
) -> UsageEvent:
    """A call's estimate: ``tokens`` of input, costing ``nanos`` nano-BRL."""
    return estimated_event(request_id, input_tokens=tokens, cost=Decimal(nanos) / 10**9, client_id=client_id)


def hold(
    tokens: int = 0, nanos: int = 0, *, expires: datetime = T0 + timedelta(minutes=10), **kw: str
) -> Reservation:
    return reservation(event(tokens, nanos, **kw), expires)


async def settle(gate: Gate, tokens: int, nanos: int, request_id: str | None = None) -> None:
    await gate.settle(event(tokens, nanos, request_id), nanos, T0)


async def test_unknown_client_is_a_miss(gate: Gate) -> None:
    assert (await gate.admit(hold(), T0)).outcome == "miss"


async def test_no_budget_always_admits(gate: Gate) -> None:
    await gate.load("acme", None, T0)
    await settle(gate, 10**9, 10**15)
    assert (await gate.admit(hold(10**9, 10**15), T0)).outcome == "ok"


async def test_settle_pauses_at_the_token_limit(gate: Gate) -> None:
    await gate.load("acme", budget_state(mode="tokens", token_limit=300, cost_limit=None), T0)
    for _ in range(2):
        await settle(gate, 100, 0)
        assert (await gate.admit(hold(), T0)).outcome == "ok"
    await settle(gate, 100, 0)
    admission = await gate.admit(hold(), T0)
    assert (admission.outcome, admission.reason) == ("refused", "token_limit")


async def test_settle_pauses_at_the_cost_limit(gate: Gate) -> None:
    await gate.load(
        "acme", budget_state(mode="cost", token_limit=None, cost_limit=Decimal("0.000000003")), T0
    )
    await settle(gate, 10**6, 2)  # tokens do not count in cost mode
    assert (await gate.admit(hold(), T0)).outcome == "ok"
    await settle(gate, 0, 1)
    admission = await gate.admit(hold(), T0)
    assert (admission.outcome, admission.reason) == ("refused", "cost_limit")


async def test_soft_budget_is_never_refused_at_its_limit(gate: Gate) -> None:
    await gate.load("acme", budget_state(pause_at_limit=False, tokens_used=5000), T0)
    await settle(gate, 5000, 0)
    assert (await gate.admit(hold(5000), T0)).outcome == "ok"
    assert (await gate.admit(hold(5000), T0)).outcome == "ok"


async def test_paused_budget_is_refused_with_its_reason(gate: Gate) -> None:
    await gate.load("acme", budget_state(paused=True, pause_reason="manual"), T0)
    admission = await gate.admit(hold(), T0)
    assert (admission.outcome, admission.reason) == ("refused", "manual")


async def test_limit_already_reached_is_refused_without_a_pause(gate: Gate) -> None:
    await gate.load("acme", budget_state(tokens_used=1000), T0)
    assert (await gate.admit(hold(), T0)).reason == "token_limit"


async def test_reservations_fill_the_limit_until_they_settle(gate: Gate) -> None:
    await gate.load("acme", budget_state(token_limit=1000), T0)
    first, second = hold(600, request_id="a"), hold(600, request_id="b")
    assert (await gate.admit(first, T0)).outcome == "ok"
    assert (await gate.admit(second, T0)).outcome == "ok"  # 0 used + 600 reserved < 1000
    busy = await gate.admit(hold(1), T0)  # 1200 reserved >= 1000
    assert (busy.outcome, busy.reason) == ("busy", "token_limit")
    await settle(gate, 50, 0, "a")  # the reservation gives way to the actual usage
    await gate.release("acme", "b")
    assert (await gate.admit(hold(900), T0)).outcome == "ok"  # 50 used + 0 reserved


async def test_concurrent_admissions_stop_at_the_limit(gate: Gate) -> None:
    await gate.load("acme", budget_state(token_limit=1000, cost_limit=None, mode="tokens"), T0)
    outcomes = await asyncio.gather(*(gate.admit(hold(100), T0) for _ in range(50)))
    assert [o.outcome for o in outcomes].count("ok") == 10


async def test_expired_reservations_are_claimed_once(gate: Gate) -> None:
    await gate.load("acme", budget_state(), T0)
    late = hold(300, 7, expires=T0 + timedelta(seconds=1), request_id="late")
    await gate.admit(late, T0)
    await gate.admit(hold(300, expires=T0 + timedelta(hours=1)), T0)
    assert await gate.claim_expired(T0, 10) == []
    claims = await asyncio.gather(*(gate.claim_expired(T0 + timedelta(seconds=2), 10) for _ in range(5)))
    assert [c for c in claims if c] == [[late]]
    assert (await gate.admit(hold(700), T0)).outcome == "ok"  # its 300 tokens are no longer held
    assert (await gate.admit(hold(1), T0)).outcome == "busy"  # 300 + 700 held


async def test_rebuild_keeps_the_reservations_in_flight(gate: Gate) -> None:
    await gate.load("acme", budget_state(token_limit=1000), T0)
    await gate.admit(hold(960, request_id="inflight"), T0)
    await gate.load("acme", budget_state(token_limit=1000, tokens_used=50), T0)  # rebuilt from the store
    assert (await gate.admit(hold(1), T0)).outcome == "busy"  # 50 used + 960 still held
    await settle(gate, 960, 0, "inflight")
    assert (await gate.admit(hold(1), T0)).reason == "token_limit"  # 1010 used


async def test_end_of_period_is_a_miss_and_drops_late_settles(gate: Gate) -> None:
    await gate.load("acme", budget_state(), T0)
    midnight = datetime(2026, 3, 11, tzinfo=UTC)
    assert (await gate.admit(hold(), midnight - timedelta(milliseconds=1))).outcome == "ok"
    assert (await gate.admit(hold(), midnight)).outcome == "miss"
    await gate.settle(event(10, 10), 10, midnight)
    assert (await gate.admit(hold(), T0)).outcome == "miss"  # the stale copy was dropped


async def test_load_replaces(gate: Gate) -> None:
    await gate.load("acme", budget_state(paused=True, pause_reason="manual"), T0)
    await gate.load("acme", budget_state(), T0)
    assert (await gate.admit(hold(), T0)).outcome == "ok"


async def test_redis_state_is_shared_between_instances(redis_prefix: str) -> None:
    from taximeter.store.redis_gate import RedisGate
    from tests.support.shared_services import REDIS_URL

    one, two = (RedisGate.from_url(REDIS_URL, prefix=redis_prefix) for _ in range(2))
    try:
        await one.load("acme", budget_state(), T0)
        await two.load("acme", budget_state(paused=True, pause_reason="manual"), T0)
        assert (await one.admit(hold(), T0)).reason == "manual"
        await two.load("acme", budget_state(tokens_used=999), T0)
        assert (await one.admit(hold(request_id="x"), T0)).outcome == "ok"
        await two.settle(event(1, 0, "x"), 0, T0)
        assert (await one.admit(hold(), T0)).reason == "token_limit"
    finally:
        await one.close()
        await two.close()


async def test_redis_calls_share_trips_and_survive_an_unloaded_script(redis_prefix: str) -> None:
    import uuid

    import redis.asyncio as aioredis

    from taximeter.store.redis_gate import _Pipeliner
    from tests.support.shared_services import REDIS_URL

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        # A script Redis has never seen: the first trip answers NOSCRIPT, then it is loaded.
        fresh = client.register_script(f"return ARGV[1] .. '-{uuid.uuid4().hex}'")
        pipeliner = _Pipeliner(client)
        replies = await asyncio.gather(*(pipeliner.call(fresh, [], [str(i)]) for i in range(50)))
        assert [r.decode().split("-")[0] for r in replies] == [str(i) for i in range(50)]
        failing = client.register_script("return redis.error_reply('no way')")
        ok, bad = await asyncio.gather(
            pipeliner.call(fresh, [], ["x"]), pipeliner.call(failing, [], []), return_exceptions=True
        )
        assert isinstance(ok, bytes) and "no way" in str(bad)  # one call's error is its own
    finally:
        await client.aclose()


async def test_local_gate_reloads_after_its_max_age() -> None:
    from taximeter.store.local_gate import LocalGate

    local = LocalGate(max_age_s=2)
    await local.load("acme", budget_state(), T0)
    assert not local.needs_refresh("acme", T0 + timedelta(seconds=2))
    assert local.needs_refresh("acme", T0 + timedelta(seconds=3))
    # An old copy keeps answering while it is reloaded in the background.
    assert (await local.admit(hold(), T0 + timedelta(seconds=3))).outcome == "ok"


async def test_extend_keeps_a_live_call_from_the_sweeper(gate: Gate) -> None:
    await gate.load("acme", budget_state(), T0)
    live = hold(10, 10, expires=T0 + timedelta(seconds=10))
    assert (await gate.admit(live, T0)).outcome == "ok"
    await gate.extend([replace(live, expires_at=T0 + timedelta(seconds=100))])
    assert await gate.claim_expired(T0 + timedelta(seconds=50), 10) == []
    [claimed] = await gate.claim_expired(T0 + timedelta(seconds=150), 10)
    assert claimed.request_id == live.request_id
    await gate.extend([live])  # no longer held: not held again
    assert await gate.claim_expired(T0 + timedelta(days=1), 10) == []


async def test_a_settled_event_outlives_its_process_until_recorded(gate: Gate) -> None:
    """A gate that outlives the process (Redis) keeps a settled event until the
    store has it; the in-process gate dies with the process and keeps nothing."""
    shared = not isinstance(gate, LocalGate)
    await gate.load("acme", budget_state(), T0)
    kept, told = event(5, 5), event(7, 7)
    for e in (kept, told):
        await gate.settle(e, 5, T0, keep_until=T0 + timedelta(seconds=10))
    await gate.recorded([told])
    assert await gate.claim_unrecorded(T0 + timedelta(seconds=5), 10) == []
    claimed = await gate.claim_unrecorded(T0 + timedelta(seconds=11), 10)
    assert [e.request_id for e in claimed] == ([kept.request_id] if shared else [])
    assert await gate.claim_unrecorded(T0 + timedelta(seconds=12), 10) == []  # leased to one caller
    await gate.recorded([kept])
    assert await gate.claim_unrecorded(T0 + timedelta(days=1), 10) == []
