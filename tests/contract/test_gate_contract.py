"""One admission contract for every gate backend: in-process, Redis, and the
store-held one (admission under the budget's row lock, SQLite and Postgres).

A case sets a budget up (``load``) and spends from it (``settle``) through
:class:`Subject`: a gate that keeps a copy is loaded and settled directly;
for the store-held gate, the budget is written to the store and usage is
recorded in its ledger, which is how that gate learns of both. Two
capabilities differ by design and are stated where they matter: a gate that
keeps a copy answers ``miss`` when it holds none (the store is its own copy),
and only a gate that outlives its process keeps settled events until the
ledger has them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from taximeter.pricing import limits
from taximeter.pricing.models import BudgetState, Limit, Reservation, UsageEvent
from taximeter.store.base import Gate, StoreUnavailable
from taximeter.store.factory import open_store
from taximeter.store.local_gate import LocalGate
from taximeter.store.redis_gate import RedisGate
from taximeter.store.sql import SqlStore
from taximeter.store.store_gate import StoreGate
from tests.support.factories import T0, budget_state, estimated_event
from tests.support.shared_services import REDIS_URL, fresh_pg_database, fresh_redis_prefix


def event(
    tokens: int = 0, nanos: int = 0, request_id: str | None = None, client_id: str = "acme"
) -> UsageEvent:
    return estimated_event(request_id, client_id=client_id, input_tokens=tokens, cost=Decimal(nanos) / 10**9)


def hold(
    tokens: int = 0, nanos: int = 0, *, expires: datetime = T0 + timedelta(minutes=10), **kw: str
) -> Reservation:
    return Reservation(event(tokens, nanos, **kw), nanos, expires)


@dataclass
class Subject:
    """One gate backend under the contract."""

    gate: Gate
    store: SqlStore | None = None  # the store-held gate's store

    @property
    def keeps_a_copy(self) -> bool:
        return self.store is None

    async def load(self, client_id: str, budget: BudgetState | None, now: datetime) -> None:
        if self.store is None:
            await self.gate.load(client_id, budget, now)
            return
        await self.store.delete_budget(client_id)
        if budget is None:
            return
        await self.store.put_budget(budget.config, now)
        if budget.tokens_used or budget.cost_used_nanos:
            await self.store.record(event(budget.tokens_used, budget.cost_used_nanos, client_id=client_id))
        if budget.paused and budget.pause_reason == "manual":
            await self.store.change_budget(client_id, "pause", now)

    async def settle(self, spent: UsageEvent, nanos: int, now: datetime, **kw: datetime) -> None:
        if self.store is None:
            await self.gate.settle(spent, nanos, now, **kw)
        else:  # the ledger's record of the call swaps its reservation for its usage
            await self.store.record(spent)


@pytest.fixture(
    params=[
        "local",
        "redis",
        pytest.param("redis-cluster", marks=pytest.mark.slow),
        "store-sqlite",
        "store-postgres",
    ]
)
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """Each gate backend, with the private cluster's address for the cluster
    (started here, outside the event loop, on first use)."""
    url = request.getfixturevalue("redis_cluster_url") if request.param == "redis-cluster" else None
    return request.param, url


@pytest.fixture
async def subject(backend_kind: tuple[str, str | None], tmp_path: os.PathLike[str]) -> AsyncIterator[Subject]:
    kind, cluster_url = backend_kind
    async with AsyncExitStack() as stack:
        if kind == "local":
            gate: Gate = LocalGate(max_age_s=30 * 86400)  # refresh by age is tested on its own
            stack.push_async_callback(gate.close)
            yield Subject(gate)
            return
        if cluster_url is not None:  # a private cluster: a prefix of its own is enough
            gate = RedisGate.from_url(cluster_url, prefix=f"t{uuid.uuid4().hex[:12]}:", cluster=True)
            stack.push_async_callback(gate.close)
            yield Subject(gate)
            return
        if kind == "redis":
            prefix = await stack.enter_async_context(fresh_redis_prefix())
            gate = RedisGate.from_url(REDIS_URL, prefix=prefix)
            stack.push_async_callback(gate.close)
            yield Subject(gate)
            return
        if kind == "store-postgres":
            url = await stack.enter_async_context(fresh_pg_database())
        else:
            url = f"sqlite:///{tmp_path}/taximeter.db"
        store = await open_store(url)
        stack.push_async_callback(store.close)
        await store.migrate()
        await store.create_client("acme", "Acme", T0)
        yield Subject(StoreGate(store), store)


async def settle(subject: Subject, tokens: int, nanos: int, request_id: str | None = None) -> None:
    await subject.settle(event(tokens, nanos, request_id), nanos, T0)


async def test_unknown_client_is_a_miss_where_the_gate_keeps_a_copy(subject: Subject) -> None:
    """A copy that holds nothing must be loaded before it decides; the store
    is its own copy, and a client without a budget is admitted."""
    expected = "miss" if subject.keeps_a_copy else "ok"
    assert (await subject.gate.admit(hold(), T0)).outcome == expected


async def test_no_budget_always_admits(subject: Subject) -> None:
    await subject.load("acme", None, T0)
    await settle(subject, 10**9, 10**15)
    assert (await subject.gate.admit(hold(10**9, 10**15), T0)).outcome == "ok"


async def test_settle_pauses_at_the_token_limit(subject: Subject) -> None:
    await subject.load("acme", budget_state(mode="tokens", token_limit=300, cost_limit=None), T0)
    for _ in range(2):
        await settle(subject, 100, 0)
        assert (await subject.gate.admit(hold(), T0)).outcome == "ok"
    await settle(subject, 100, 0)
    admission = await subject.gate.admit(hold(), T0)
    assert (admission.outcome, admission.reason) == ("refused", "token_limit")


async def test_settle_pauses_at_the_cost_limit(subject: Subject) -> None:
    await subject.load(
        "acme", budget_state(mode="cost", token_limit=None, cost_limit=Decimal("0.000000003")), T0
    )
    await settle(subject, 10**6, 2)  # tokens do not count in cost mode
    assert (await subject.gate.admit(hold(), T0)).outcome == "ok"
    await settle(subject, 0, 1)
    admission = await subject.gate.admit(hold(), T0)
    assert (admission.outcome, admission.reason) == ("refused", "cost_limit")


async def test_soft_budget_is_never_refused_at_its_limit(subject: Subject) -> None:
    await subject.load("acme", budget_state(pause_at_limit=False, tokens_used=5000), T0)
    await settle(subject, 5000, 0)
    assert (await subject.gate.admit(hold(5000), T0)).outcome == "ok"
    assert (await subject.gate.admit(hold(5000), T0)).outcome == "ok"


async def test_paused_budget_is_refused_with_its_reason(subject: Subject) -> None:
    await subject.load("acme", budget_state(paused=True, pause_reason="manual"), T0)
    admission = await subject.gate.admit(hold(), T0)
    assert (admission.outcome, admission.reason) == ("refused", "manual")


async def test_limit_already_reached_is_refused_without_a_pause(subject: Subject) -> None:
    await subject.load("acme", budget_state(tokens_used=1000), T0)
    assert (await subject.gate.admit(hold(), T0)).reason == "token_limit"


async def test_reservations_fill_the_limit_until_they_settle(subject: Subject) -> None:
    await subject.load("acme", budget_state(token_limit=1000), T0)
    first, second = hold(600, request_id="a"), hold(600, request_id="b")
    assert (await subject.gate.admit(first, T0)).outcome == "ok"
    assert (await subject.gate.admit(second, T0)).outcome == "ok"  # 0 used + 600 reserved < 1000
    busy = await subject.gate.admit(hold(1), T0)  # 1200 reserved >= 1000
    assert (busy.outcome, busy.reason) == ("busy", "token_limit")
    await settle(subject, 50, 0, "a")  # the reservation gives way to the actual usage
    await subject.gate.release("acme", "b")
    assert (await subject.gate.admit(hold(900), T0)).outcome == "ok"  # 50 used + 0 reserved


async def test_concurrent_admissions_stop_at_the_limit(subject: Subject) -> None:
    await subject.load("acme", budget_state(token_limit=1000, cost_limit=None, mode="tokens"), T0)
    outcomes = await asyncio.gather(*(subject.gate.admit(hold(100), T0) for _ in range(50)))
    assert [o.outcome for o in outcomes].count("ok") == 10


async def test_expired_reservations_are_claimed_once(subject: Subject) -> None:
    await subject.load("acme", budget_state(), T0)
    late = hold(300, 7, expires=T0 + timedelta(seconds=1), request_id="late")
    await subject.gate.admit(late, T0)
    await subject.gate.admit(hold(300, expires=T0 + timedelta(hours=1)), T0)
    assert await subject.gate.claim_expired(T0, 10) == []
    claims = await asyncio.gather(
        *(subject.gate.claim_expired(T0 + timedelta(seconds=2), 10) for _ in range(5))
    )
    assert [c for c in claims if c] == [[late]]
    assert (await subject.gate.admit(hold(700), T0)).outcome == "ok"  # its 300 tokens are no longer held
    assert (await subject.gate.admit(hold(1), T0)).outcome == "busy"  # 300 + 700 held


async def test_rebuild_keeps_the_reservations_in_flight(subject: Subject) -> None:
    await subject.load("acme", budget_state(token_limit=1000), T0)
    await subject.gate.admit(hold(960, request_id="inflight"), T0)
    await subject.load("acme", budget_state(token_limit=1000, tokens_used=50), T0)  # rebuilt from the store
    assert (await subject.gate.admit(hold(1), T0)).outcome == "busy"  # 50 used + 960 still held
    await settle(subject, 960, 0, "inflight")
    assert (await subject.gate.admit(hold(1), T0)).reason == "token_limit"  # 1010 used


async def test_the_old_period_never_decides_after_its_end(subject: Subject) -> None:
    """At the boundary a copy answers ``miss`` (to be reloaded from the store,
    which rolls the period) and drops a late settle; the store-held gate
    rolls the period itself and admits against the new one."""
    await subject.load("acme", budget_state(tokens_used=990), T0)
    midnight = datetime(2026, 3, 11, tzinfo=UTC)
    assert (await subject.gate.admit(hold(10), midnight - timedelta(milliseconds=1))).outcome == "ok"
    assert (await subject.gate.admit(hold(1), midnight - timedelta(milliseconds=1))).outcome == "busy"
    at_midnight = await subject.gate.admit(hold(10), midnight)
    assert at_midnight.outcome == ("miss" if subject.keeps_a_copy else "ok")
    if subject.keeps_a_copy:
        await subject.settle(event(10, 10), 10, midnight)
        assert (await subject.gate.admit(hold(), T0)).outcome == "miss"  # the stale copy was dropped


async def test_load_replaces(subject: Subject) -> None:
    await subject.load("acme", budget_state(paused=True, pause_reason="manual"), T0)
    await subject.load("acme", budget_state(), T0)
    assert (await subject.gate.admit(hold(), T0)).outcome == "ok"


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

    from taximeter.store.redis_gate import _Pipeliner, _Script
    from tests.support.shared_services import REDIS_URL

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        # A script Redis has never seen: the first trip answers NOSCRIPT, then it is loaded.
        fresh = _Script.of(f"return ARGV[1] .. '-{uuid.uuid4().hex}'")
        pipeliner = _Pipeliner(client)
        replies = await asyncio.gather(*(pipeliner.call(fresh, [], [str(i)]) for i in range(50)))
        assert [r.decode().split("-")[0] for r in replies] == [str(i) for i in range(50)]
        failing = _Script.of("return redis.error_reply('no way')")
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


async def test_extend_keeps_a_live_call_from_the_sweeper(subject: Subject) -> None:
    await subject.load("acme", budget_state(), T0)
    live = hold(10, 10, expires=T0 + timedelta(seconds=10))
    assert (await subject.gate.admit(live, T0)).outcome == "ok"
    await subject.gate.extend([replace(live, expires_at=T0 + timedelta(seconds=100))])
    assert await subject.gate.claim_expired(T0 + timedelta(seconds=50), 10) == []
    [claimed] = await subject.gate.claim_expired(T0 + timedelta(seconds=150), 10)
    assert claimed.request_id == live.request_id
    await subject.gate.extend([live])  # no longer held: not held again
    assert await subject.gate.claim_expired(T0 + timedelta(days=1), 10) == []


async def test_a_settled_event_outlives_its_process_until_recorded(subject: Subject) -> None:
    """A gate that outlives the process (Redis) keeps a settled event until the
    store has it; the in-process gate dies with the process and keeps nothing."""
    shared = isinstance(subject.gate, RedisGate)
    await subject.load("acme", budget_state(), T0)
    kept, told = event(5, 5), event(7, 7)
    for e in (kept, told):
        await subject.settle(e, 5, T0, keep_until=T0 + timedelta(seconds=10))
    await subject.gate.recorded([told])
    assert await subject.gate.claim_unrecorded(T0 + timedelta(seconds=5), 10) == []
    claimed = await subject.gate.claim_unrecorded(T0 + timedelta(seconds=11), 10)
    assert [e.request_id for e in claimed] == ([kept.request_id] if shared else [])
    assert await subject.gate.claim_unrecorded(T0 + timedelta(seconds=12), 10) == []  # leased to one caller
    await subject.gate.recorded([kept])
    assert await subject.gate.claim_unrecorded(T0 + timedelta(days=1), 10) == []


# -- limits beside the budget (section 6b) --------------------------------------------------


def limited(
    *declared: Limit, tokens: int = 100, request_id: str | None = None, user: str | None = None
) -> Reservation:
    """A call of ``tokens`` holding what it must on each of ``declared``."""
    reservation = hold(tokens, request_id=request_id) if request_id else hold(tokens)
    holds = limits.holds_for(
        declared,
        client_id="acme",
        model="gpt-4o",
        end_user=user,
        tokens=tokens,
        cost_nanos=0,
        timezone="UTC",
        now=T0,
    )
    return replace(reservation, holds=holds)


RPM = Limit("rpm", "requests", 3, "minute")
PARALLEL = Limit("parallel", "concurrent", 2)
DAILY = Limit("daily", "tokens", 250, "daily", per="end_user")


async def test_a_request_limit_counts_admissions_and_gives_back_released_ones(subject: Subject) -> None:
    await subject.load("acme", None, T0)
    calls = [limited(RPM, request_id=f"r{i}") for i in range(3)]
    for call in calls:
        assert (await subject.gate.admit(call, T0)).outcome == "ok"
    refused = await subject.gate.admit(limited(RPM), T0)
    assert (refused.outcome, refused.reason) == ("refused", "limit:rpm")
    await subject.gate.release("acme", "r0")  # never forwarded: not a request
    assert (await subject.gate.admit(limited(RPM, request_id="r3"), T0)).outcome == "ok"


async def test_a_concurrency_limit_counts_calls_in_flight(subject: Subject) -> None:
    await subject.load("acme", None, T0)
    assert (await subject.gate.admit(limited(PARALLEL, request_id="a"), T0)).outcome == "ok"
    assert (await subject.gate.admit(limited(PARALLEL, request_id="b"), T0)).outcome == "ok"
    assert (await subject.gate.admit(limited(PARALLEL), T0)).reason == "limit:parallel"
    await settle(subject, 100, 0, "a")
    assert (await subject.gate.admit(limited(PARALLEL, request_id="c"), T0)).outcome == "ok"


async def test_concurrent_admissions_stop_at_a_limit(subject: Subject) -> None:
    await subject.load("acme", None, T0)
    many = Limit("rps", "requests", 10, "hour")
    outcomes = await asyncio.gather(*(subject.gate.admit(limited(many), T0) for _ in range(40)))
    assert [o.outcome for o in outcomes].count("ok") == 10


async def test_a_spend_cap_the_gate_has_not_seen_is_counted_from_the_ledger(subject: Subject) -> None:
    """A gate that keeps a copy answers ``miss`` for it; loaded with what the
    ledger counted, it decides. The store-held gate reads the ledger itself."""
    await subject.load("acme", None, T0)
    await subject.settle(replace(event(200), end_user="+55119"), 0, T0)
    call = limited(DAILY, user="+55119")
    if subject.keeps_a_copy:
        missing = await subject.gate.admit(call, T0)
        assert (missing.outcome, missing.reason) == ("miss", "limits")
        await subject.gate.load_limits([(call.holds[0], 200)], T0)
    assert (await subject.gate.admit(call, T0)).outcome == "ok"  # 200 used, 100 held: room left
    assert (await subject.gate.admit(limited(DAILY, user="+55119"), T0)).outcome == "busy"  # 300 >= 250
    other = limited(DAILY, user="+55118")
    if subject.keeps_a_copy:
        await subject.gate.load_limits([(other.holds[0], 0)], T0)
    assert (await subject.gate.admit(other, T0)).outcome == "ok"  # another end user, its own counter


async def test_a_call_the_store_already_counts_reaches_only_its_limits(subject: Subject) -> None:
    """A call settled while its budget's copy was rebuilt (the store's read
    holds it) still counts on its limits: ``settle(budget=False)``."""
    if not subject.keeps_a_copy:
        return  # the store-held gate has no copy: its ledger is the count
    await subject.load("acme", budget_state(token_limit=1000), T0)
    call = limited(RPM, request_id="r0")
    assert (await subject.gate.admit(call, T0)).outcome == "ok"
    counted = await subject.gate.settle(event(100, request_id="r0"), 0, T0, budget=False)
    assert counted == {call.holds[0].key: 1}  # the request counted, nothing left reserved
    assert await subject.gate.limit_counters(list(call.holds)) == [(1, 0)]
    await settle(subject, 950, 0)  # the budget's copy did not get the first call's 100
    assert (await subject.gate.admit(hold(1), T0)).outcome == "ok"


async def test_a_redefined_limit_counts_afresh_and_a_raised_one_keeps_counting(subject: Subject) -> None:
    await subject.load("acme", None, T0)
    tokens = Limit("cap", "tokens", 250, "hour")
    first = limited(tokens, request_id="a")
    assert (await subject.gate.admit(first, T0)).outcome == "ok"
    await settle(subject, 200, 0, "a")
    raised = limited(replace(tokens, limit=300))
    assert raised.holds[0].key == first.holds[0].key
    as_requests = limited(Limit("cap", "requests", 250, "hour"))
    assert as_requests.holds[0].key != first.holds[0].key  # tokens are not requests


@pytest.mark.slow
async def test_a_cluster_sweeper_lists_again_the_slots_it_holds(redis_cluster_url: str) -> None:
    """The list of slots in use is lost (a failover without it): a process
    holding reservations lists its slots again on its next sweep."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    holder, other = (RedisGate.from_url(redis_cluster_url, prefix=prefix, cluster=True) for _ in range(2))
    try:
        await holder.load("acme", budget_state(), T0)
        assert (await holder.admit(hold(expires=T0 + timedelta(seconds=10)), T0)).outcome == "ok"
        await holder._redis.delete(holder._keys.slots)
        assert await other.claim_expired(T0 + timedelta(days=1), 10) == []  # nowhere to look
        assert await holder.claim_expired(T0, 10) == []  # lists its slot again; nothing due yet
        [claimed] = await other.claim_expired(T0 + timedelta(days=1), 10)
        assert claimed.client_id == "acme"
    finally:
        await holder.close()
        await other.close()


@pytest.mark.slow
async def test_a_gate_for_one_server_on_a_cluster_says_to_set_redis_cluster(redis_cluster_url: str) -> None:
    gate = RedisGate.from_url(redis_cluster_url, prefix=f"t{uuid.uuid4().hex[:12]}:")
    try:
        for client in (f"c{i}" for i in range(10)):  # some of them on another node: MOVED
            try:
                await gate.load(client, None, T0)
            except StoreUnavailable as exc:
                assert str(exc) == "Redis is a cluster: set redis_cluster = true"
                return
        pytest.fail("every client was on the node the gate talks to")
    finally:
        await gate.close()
