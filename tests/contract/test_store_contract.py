"""One contract for every store backend (SQLite and Postgres, real servers)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState, OwnedObject, Reservation, UsageEvent
from taximeter.pricing.money import quantize, to_nanos
from taximeter.store.base import Conflict, NotFound, Store, StoreUnavailable
from taximeter.store.sql.rows import BUDGET_COLUMNS, NEVER, budget_from_row
from tests.support.factories import (
    T0,
    add_client,
    api_key,
    budget_config,
    reservation,
    usage_event,
)


def event(
    request_id: str, *, tokens: int = 100, cost: str = "0.01", at: datetime = T0, **kw: object
) -> UsageEvent:
    """An event of ``tokens`` (half in, half out) costing ``cost`` BRL."""
    return usage_event(
        request_id,
        at,
        input_tokens=tokens // 2,
        output_tokens=tokens - tokens // 2,
        cost_usd=quantize(Decimal(cost) / 5),
        cost=Decimal(cost),
        **kw,
    )


async def test_clients(store: Store) -> None:
    created = await store.create_client("acme", "Acme Inc", T0)
    assert (created.id, created.name, created.created_at) == ("acme", "Acme Inc", T0)
    with pytest.raises(Conflict):
        await store.create_client("acme", "Again", T0)
    await store.create_client("beta", "Beta", T0)
    assert [c.id for c in await store.list_clients()] == ["acme", "beta"]
    fetched = await store.get_client("acme")
    assert fetched is not None and fetched.name == "Acme Inc" and fetched.created_at == T0
    assert await store.get_client("nobody") is None


async def test_keys(store: Store) -> None:
    await add_client(store)
    key = api_key()
    assert await store.create_key(key) == key
    with pytest.raises(Conflict):
        await store.create_key(api_key(key_hash="hash-2"))
    with pytest.raises(NotFound):
        await store.create_key(api_key("tm_zzzzzzzzz", "nobody", "hash-3"))
    assert await store.find_key("tm_abcdefghi") == key
    revoked = await store.revoke_key("tm_abcdefghi", T0)
    assert revoked is not None and revoked.revoked
    assert (await store.revoke_key("tm_abcdefghi", T0)) == revoked  # idempotent
    assert await store.revoke_key("tm_missing00", T0) is None
    assert [k.revoked for k in await store.list_keys("acme")] == [True]


async def test_budget_lifecycle(store: Store) -> None:
    await add_client(store)
    with pytest.raises(NotFound):
        await store.put_budget(budget_config("nobody"), T0)
    state = await store.put_budget(budget_config(), T0)
    assert state.period_start == datetime(2026, 3, 10, tzinfo=UTC)
    assert (state.tokens_used, state.cost_used_nanos, state.paused) == (0, 0, False)
    fetched = await store.get_budget("acme", T0)
    assert fetched == state
    paused = await store.change_budget("acme", "pause", T0)
    assert paused is not None and paused.paused and paused.pause_reason == "manual"
    resumed = await store.change_budget("acme", "resume", T0)
    assert resumed is not None and not resumed.paused and resumed.version > paused.version
    assert [s.client_id for s in await store.list_budgets(T0)] == ["acme"]
    assert await store.delete_budget("acme")
    assert not await store.delete_budget("acme")
    assert await store.get_budget("acme", T0) is None
    assert await store.change_budget("acme", "pause", T0) is None


async def test_record_counts_and_is_idempotent(store: Store) -> None:
    await add_client(store)
    await store.put_budget(budget_config(), T0)
    first = await store.record(event("r1", tokens=120, cost="0.250000001"))
    assert first.recorded and first.state is not None
    assert (first.state.tokens_used, first.state.cost_used_nanos) == (120, 250_000_001)
    replay = await store.record(event("r1", tokens=120, cost="0.250000001"))
    assert not replay.recorded
    state = await store.get_budget("acme", T0)
    assert state is not None and (state.tokens_used, state.cost_used_nanos) == (120, 250_000_001)
    [stored] = await store.list_events("acme", 10)
    assert stored == event("r1", tokens=120, cost="0.250000001")
    assert await store.ledger_totals("acme", state.period_start) == (120, 250_000_001)


@pytest.mark.parametrize(
    ("mode", "limits", "events", "reason"),
    [
        ("tokens", {"token_limit": 300, "cost_limit": None}, [100, 100, 100], "token_limit"),
        ("cost", {"token_limit": None, "cost_limit": Decimal("0.03")}, [1, 1, 1], "cost_limit"),
        ("both", {"token_limit": 10_000, "cost_limit": Decimal("0.03")}, [1, 1, 1], "cost_limit"),
        ("both", {"token_limit": 300, "cost_limit": Decimal("100")}, [100, 100, 100], "token_limit"),
    ],
)
async def test_record_pauses_exactly_at_the_limit(
    store: Store, mode: str, limits: dict[str, object], events: list[int], reason: str
) -> None:
    await add_client(store)
    await store.put_budget(budget_config(mode=mode, **limits), T0)
    for i, tokens in enumerate(events):
        result = await store.record(event(f"r{i}", tokens=tokens, cost="0.01"))
        assert result.state is not None
        assert result.state.paused == (i == len(events) - 1)
    assert result.state.pause_reason == reason


async def test_soft_budget_never_pauses(store: Store) -> None:
    await add_client(store)
    await store.put_budget(budget_config(pause_at_limit=False, token_limit=100), T0)
    for i in range(3):
        result = await store.record(event(f"r{i}", tokens=100))
    assert result.state is not None and result.state.tokens_used == 300 and not result.state.paused


async def test_period_rollover_resets_counters_but_keeps_manual_pause(store: Store) -> None:
    await add_client(store)
    await store.put_budget(budget_config(token_limit=100), T0)
    result = await store.record(event("r1", tokens=100))
    assert result.state is not None and result.state.pause_reason == "token_limit"
    next_day = T0 + timedelta(days=1)
    rolled = await store.get_budget("acme", next_day)
    assert rolled is not None
    assert (rolled.tokens_used, rolled.paused, rolled.period_start) == (
        0,
        False,
        datetime(2026, 3, 11, tzinfo=UTC),
    )
    await store.change_budget("acme", "pause", next_day)
    after = await store.get_budget("acme", next_day + timedelta(days=1))
    assert after is not None and after.paused and after.pause_reason == "manual" and after.tokens_used == 0


async def test_roll_due_starts_each_ended_period_once(store: Store) -> None:
    for client_id, period in (("daily", "daily"), ("monthly", "monthly"), ("forever", "none")):
        await add_client(store, client_id)
        await store.put_budget(budget_config(client_id, period=period), T0)
        await store.record(event(f"{client_id}-1", client_id=client_id))
    assert await store.roll_due(T0 + timedelta(hours=1)) == 0
    next_day = datetime(2026, 3, 11, tzinfo=UTC)
    assert await store.roll_due(next_day) == 1  # only the daily budget's period ended
    assert await store.roll_due(next_day) == 0  # and only once
    used = {s.client_id: s.tokens_used for s in await store.list_budgets(next_day)}
    assert used == {"daily": 0, "forever": 100, "monthly": 100}


async def test_roll_due_reads_only_the_budgets_due(store: Store) -> None:
    """Each budget keeps when its period ends; the sweeper's query selects by
    it, so a tick reads what is due, not every budget."""
    for client_id, period in (("daily", "daily"), ("monthly", "monthly"), ("forever", "none")):
        await add_client(store, client_id)
        await store.put_budget(budget_config(client_id, period=period), T0)
    ends = {
        "daily": datetime(2026, 3, 11, tzinfo=UTC),
        "monthly": datetime(2026, 4, 1, tzinfo=UTC),
        "forever": NEVER,  # a lifetime budget's period never ends
    }

    async def stored_ends() -> dict[str, datetime | None]:  # None: written by an older release
        d = store.dialect  # type: ignore[attr-defined]
        async with store.connection() as conn:  # type: ignore[attr-defined]
            rows = await conn.fetchall("SELECT client_id, next_reset FROM budgets")
        return {
            r["client_id"]: None if r["next_reset"] is None else d.time_out(r["next_reset"]) for r in rows
        }

    async def due(now: datetime) -> list[str]:
        return sorted(c for c, end in (await stored_ends()).items() if end is not None and end <= now)

    assert await stored_ends() == ends
    # As the migration leaves them: a lower bound (the period's start), each
    # read once by the next sweep and given its real end.
    async with store.transaction() as conn:  # type: ignore[attr-defined]
        await conn.execute("UPDATE budgets SET next_reset = period_start")
    assert await due(T0) == ["daily", "forever", "monthly"]
    assert await store.roll_due(T0) == 0
    assert await stored_ends() == ends and await due(T0) == []
    async with store.transaction() as conn:  # type: ignore[attr-defined]  # as an older release writes them
        await conn.execute("UPDATE budgets SET next_reset = NULL WHERE client_id <> 'daily'")
    assert await store.roll_due(T0) == 0
    assert await stored_ends() == ends
    next_day = ends["daily"]
    assert await due(next_day) == ["daily"]
    assert await store.roll_due(next_day) == 1
    assert (await stored_ends())["daily"] == datetime(2026, 3, 12, tzinfo=UTC)
    assert await due(next_day) == []


async def test_client_standings_reckon_urgency_as_the_budget_math_does(store: Store) -> None:
    """The overview's one read says how close each client is to a limit as
    :func:`budgets.urgency` says of its budget rolled over to now."""
    cases: dict[str, dict[str, object]] = {
        "tokens-half": {"mode": "tokens", "token_limit": 1000, "cost_limit": None},
        "cost-most": {"mode": "cost", "token_limit": None, "cost_limit": Decimal("0.05")},
        "both": {"mode": "both", "token_limit": 10_000, "cost_limit": Decimal("0.04")},
        "soft-over": {"mode": "tokens", "token_limit": 300, "cost_limit": None, "pause_at_limit": False},
        "over": {"mode": "tokens", "token_limit": 300, "cost_limit": None},
        "manual": {"mode": "both", "token_limit": 10_000, "cost_limit": Decimal("1.00")},
        "monthly": {"mode": "tokens", "token_limit": 1000, "cost_limit": None, "period": "monthly"},
        "lifetime": {"mode": "tokens", "token_limit": 1000, "cost_limit": None, "period": "none"},
        "credited": {"mode": "cost", "token_limit": None, "cost_limit": Decimal("0.02")},
    }
    for client_id, fields in cases.items():
        await add_client(store, client_id)
        await store.put_budget(budget_config(client_id, **fields), T0)
        await store.record(event(f"{client_id}-1", client_id=client_id, tokens=500, cost="0.03"))
    await store.change_budget("manual", "pause", T0)
    await store.add_credit("credited", Decimal("0.02"), "top-up", T0)  # 0.03 of 0.04: unpaused
    await add_client(store, "nobudget")
    for now in (T0 + timedelta(hours=1), T0 + timedelta(days=1, hours=1)):  # the daily periods rolled
        stored = {client_id: got for client_id, _, got in await store.client_standings(now)}
        expected: dict[str, float | None] = {"nobudget": None}
        async with store.connection() as conn:  # type: ignore[attr-defined]
            rows = await conn.fetchall("SELECT client_id FROM budgets")
        for row in rows:
            state = await _stored_budget(store, row["client_id"])
            expected[row["client_id"]] = budgets.urgency(budgets.roll(state, now))
        assert stored.keys() == expected.keys()
        for client_id, want in expected.items():
            got = stored[client_id]
            assert (got is None) == (want is None), client_id
            assert want is None or got == pytest.approx(want, abs=1e-6), (client_id, now)
        if now < T0 + timedelta(days=1):
            assert stored["over"] == pytest.approx(500 / 3) and stored["credited"] == pytest.approx(75)
            assert stored["tokens-half"] == pytest.approx(50) and stored["manual"] == pytest.approx(100)
        else:  # a new day: the daily budgets count from zero; a manual pause stays
            assert stored["over"] == 0 and stored["manual"] == pytest.approx(100)
            assert stored["monthly"] == pytest.approx(50) and stored["lifetime"] == pytest.approx(50)


async def _stored_budget(store: Store, client_id: str) -> BudgetState:
    """A budget as stored, not rolled over."""
    async with store.connection() as conn:  # type: ignore[attr-defined]
        row = await conn.fetchone(f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE client_id = ?", client_id)
    return budget_from_row(store.dialect, row)  # type: ignore[attr-defined]


async def test_event_from_a_past_period_is_stored_not_counted(store: Store) -> None:
    await add_client(store)
    await store.put_budget(budget_config(), T0)
    await store.get_budget("acme", T0 + timedelta(days=1))  # the period moves on
    late = await store.record(event("late", at=T0))
    assert late.recorded and late.state is not None and late.state.tokens_used == 0
    assert len(await store.list_events("acme", 10)) == 1


async def test_raising_the_limit_lifts_a_limit_pause(store: Store) -> None:
    await add_client(store)
    await store.put_budget(budget_config(token_limit=100), T0)
    await store.record(event("r1", tokens=100))
    raised = await store.put_budget(budget_config(token_limit=1000), T0)
    assert not raised.paused and raised.tokens_used == 100


async def test_concurrent_records_are_atomic(store: Store) -> None:
    await add_client(store)
    await store.put_budget(budget_config(token_limit=10**9, cost_limit=Decimal(10**6)), T0)
    events = [event(f"c{i}", tokens=7, cost="0.000000123") for i in range(40)]
    replays = [event("same", tokens=7, cost="0.000000123") for _ in range(20)]
    results = await asyncio.gather(*(store.record(e) for e in events + replays))
    assert sum(r.recorded for r in results) == 41
    state = await store.get_budget("acme", T0)
    assert state is not None
    assert (state.tokens_used, state.cost_used_nanos) == (41 * 7, 41 * 123)
    assert await store.ledger_totals("acme", state.period_start) == (41 * 7, 41 * 123)


async def test_reports_sum_to_the_counters(store: Store) -> None:
    await add_client(store)
    await store.put_budget(budget_config(period="monthly", token_limit=10**9, cost_limit=Decimal(10**6)), T0)
    rows = [
        event("a", api_type="chat", model="gpt-4o", cost="0.5", end_user="u1"),
        event("b", api_type="tts", model="tts-1", cost="0.25", end_user="u2"),
        event("c", api_type="chat", model="gpt-4o-mini", cost="0.125", at=T0 + timedelta(hours=10)),
    ]
    for e in rows:
        await store.record(e)
    state = await store.get_budget("acme", T0)
    assert state is not None
    spend = await store.spend_by_api_type("acme", state.period_start)
    assert spend == {"chat": Decimal("0.625"), "tts": Decimal("0.25")}
    for group in ("api_type", "model", "day", "end_user"):
        report = await store.usage_report("acme", T0 - timedelta(days=1), T0 + timedelta(days=2), group)
        assert sum(r.cost for r in report) == Decimal("0.875")
        assert sum(r.requests for r in report) == 3
    by_day = await store.usage_report(None, T0 - timedelta(days=1), T0 + timedelta(days=2), "day")
    assert [(r.key, r.requests) for r in by_day] == [("2026-03-10", 2), ("2026-03-11", 1)]
    assert to_nanos(Decimal("0.875")) == state.cost_used_nanos


async def test_closed_store_raises_store_unavailable(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get_client("acme")


async def test_reset_racing_with_recording_loses_and_doubles_nothing(store: Store) -> None:
    await add_client(store)
    await store.put_budget(budget_config(period="monthly", token_limit=10**9, cost_limit=Decimal(10**6)), T0)
    reset_at = T0 + timedelta(seconds=1)
    # Forty calls made before the reset commit while an operator resets the budget:
    # each lands before it (counted, then zeroed) or after it (older than the new
    # period, so not counted); forty more made after it commit at the same time.
    before = [event(f"b{i}", tokens=10, cost="0.001", at=T0 + timedelta(microseconds=i)) for i in range(40)]
    after = [
        event(f"a{i}", tokens=7, cost="0.002", at=reset_at + timedelta(microseconds=i + 1)) for i in range(40)
    ]
    await asyncio.gather(*(store.record(e) for e in before), store.change_budget("acme", "reset", reset_at))
    await asyncio.gather(*(store.record(e) for e in after))
    state = await store.get_budget("acme", reset_at + timedelta(seconds=1))
    assert state is not None and state.period_start == reset_at
    assert (state.tokens_used, state.cost_used_nanos) == (40 * 7, 40 * 2_000_000)
    assert await store.ledger_totals("acme", state.period_start) == (state.tokens_used, state.cost_used_nanos)
    assert len(await store.list_events("acme", 100)) == 80  # every call in the ledger, once


def held(request_id: str, tokens: int, *, expires: datetime = T0 + timedelta(minutes=5)) -> Reservation:
    """A call's reservation of ``tokens`` costing 0.001 BRL, until ``expires``."""
    return reservation(event(request_id, tokens=tokens, cost="0.001", estimated=True, status=0), expires)


async def test_store_held_reservations_apply_the_gate_rule(store: Store) -> None:
    await add_client(store)
    await store.put_budget(budget_config(mode="tokens", token_limit=1000, cost_limit=None), T0)
    outcomes = await asyncio.gather(*(store.reserve(held(f"h{i}", 100), T0) for i in range(30)))
    assert [o.outcome for o in outcomes].count("ok") == 10  # under the row lock: exactly the room there is
    assert {o.outcome for o in outcomes} == {"ok", "busy"}
    # The ledger's record of a call frees its reservation in the same transaction.
    await store.record(event("h0", tokens=40))
    assert (await store.reserve(held("late", 100), T0)).outcome == "ok"  # 40 used + 900 held < 1000
    await store.drop_reservation("late")
    assert (await store.reserve(held("again", 60), T0)).outcome == "ok"


async def test_expired_store_held_reservations_are_claimed_once(store: Store) -> None:
    await add_client(store)
    await store.reserve(held("dead", 10, expires=T0 + timedelta(seconds=1)), T0)
    await store.reserve(held("alive", 10), T0)
    claims = await asyncio.gather(
        *(store.claim_expired_reservations(T0 + timedelta(seconds=2), 10) for _ in range(4))
    )
    assert [[r.request_id for r in c] for c in claims if c] == [["dead"]]
    [claimed] = [r for c in claims for r in c]
    assert (claimed.event.estimated, claimed.tokens, claimed.cost_nanos) == (True, 10, 1_000_000)


async def test_a_batch_records_like_one_event_at_a_time(store: Store) -> None:
    await add_client(store)
    await add_client(store, "beta")
    await store.put_budget(budget_config(mode="tokens", token_limit=250, cost_limit=None), T0)
    batch = [
        event("b1", tokens=100),
        event("b2", tokens=100, client_id="beta"),  # no budget: recorded, not counted
        event("b1", tokens=100),  # a replay inside the batch
        event("b3", tokens=100),
        event("b4", tokens=100),  # crosses the limit: the budget pauses
    ]
    results = await store.record_many(batch)  # type: ignore[attr-defined]
    assert [r.recorded for r in results] == [True, True, False, True, True]
    state = await store.get_budget("acme", T0)
    assert state is not None and (state.tokens_used, state.paused, state.pause_reason) == (
        300,
        True,
        "token_limit",
    )
    assert await store.ledger_totals("acme", state.period_start) == (300, state.cost_used_nanos)
    assert len(await store.list_events(None, 10)) == 4
    [(paused, _), *thresholds] = await store.list_alerts("acme")  # type: ignore[attr-defined]
    assert paused.kind == "paused" and [t.kind for t, _ in thresholds] == ["threshold"] * 3


async def test_dashboard_sessions_expire_end_and_belong_to_their_scope(store: Store) -> None:
    later = T0 + timedelta(hours=8)
    await store.create_session("hash-a", "scope-1", T0, later)
    assert await store.session_valid("hash-a", "scope-1", T0)
    assert await store.session_valid("hash-a", "scope-1", later - timedelta(seconds=1))
    assert not await store.session_valid("hash-a", "scope-1", later)  # expired
    assert not await store.session_valid("hash-a", "scope-2", T0)  # another admin token
    assert not await store.session_valid("hash-b", "scope-1", T0)

    await store.create_session("hash-b", "scope-1", T0, later)
    await store.end_session("hash-b")
    await store.end_session("hash-b")  # idempotent
    assert not await store.session_valid("hash-b", "scope-1", T0)

    # Opening a session after the first expired purges it: the table stays small.
    await store.create_session("hash-c", "scope-1", later, later + timedelta(hours=8))
    assert not await store.session_valid("hash-a", "scope-1", T0)
    assert await store.session_valid("hash-c", "scope-1", later)


async def test_a_new_budget_counts_what_its_period_already_spent(store: Store) -> None:
    await add_client(store)
    await store.record_many([event("a", tokens=600, at=T0 - timedelta(hours=1)), event("b", tokens=600)])
    await store.record(event("old", tokens=900, at=T0 - timedelta(days=1)))  # yesterday: another period
    later = T0 + timedelta(minutes=1)
    state = await store.put_budget(budget_config(token_limit=1000, period="daily"), later)
    assert (state.tokens_used, state.cost_used_nanos) == (1200, to_nanos(Decimal("0.02")))
    assert (state.paused, state.pause_reason) == (True, "token_limit")  # already past the new limit
    assert await store.ledger_totals("acme", state.period_start) == (state.tokens_used, state.cost_used_nanos)
    # A new period recounts from its own start; the same period keeps its counters.
    state = await store.put_budget(budget_config(token_limit=10_000, period="monthly"), later)
    assert state.tokens_used == 2100 and not state.paused
    state = await store.put_budget(budget_config(token_limit=20_000, period="monthly"), later)
    assert state.tokens_used == 2100


async def test_upstream_objects_keep_their_first_owner(store: Store) -> None:
    await store.create_client("acme", "Acme", T0)
    await store.create_client("rival", "Rival", T0)
    mine = OwnedObject("resp_1", "response", "acme", "openai", T0)
    await store.own_objects([mine])
    await store.own_objects([OwnedObject("resp_1", "response", "rival", "openai", T0)])  # never taken over
    await store.own_objects(
        [OwnedObject("file-2", "file", "rival", "groq", T0, {"object": {"id": "file-2"}})]
    )
    found = await store.owned_objects(["resp_1", "file-2", "nothing", "resp_1"])
    assert found == {"resp_1": mine, "file-2": OwnedObject("file-2", "file", "rival", "groq", T0)}
    assert found["file-2"].detail == {"object": {"id": "file-2"}} and found["resp_1"].detail is None
    assert await store.owned_objects([]) == {}
    await store.forget_object("resp_1")
    assert list(await store.owned_objects(["resp_1", "file-2"])) == ["file-2"]


async def test_reports_read_from_daily_totals_equal_the_events_over_any_window(store: Store) -> None:
    """Whole days come from the daily totals, the edges from the events: over
    windows that start and end at odd times, every grouping sums exactly what
    the events in the window sum (computed here, event by event)."""

    rng = random.Random(7)
    await add_client(store)
    await add_client(store, "rival")
    recorded = []
    for i in range(240):
        at = T0 - timedelta(days=3) + timedelta(minutes=rng.randrange(0, 6 * 24 * 60), seconds=rng.random())
        e = event(
            f"r{i}",
            tokens=rng.randrange(1, 5000),
            cost=str(Decimal(rng.randrange(1, 10**9)).scaleb(-9)),
            at=at,
            client_id=rng.choice(["acme", "acme", "rival"]),
            api_type=rng.choice(["chat", "tts", "embeddings"]),
            model=rng.choice(["gpt-4o", "gpt-4o-mini", "tts-1"]),
            end_user=rng.choice([None, "u1", "u2", f"user-{i}"]),  # some totals of their own
        )
        recorded.append(e)
    # One batch of more totals than one statement writes, then small ones with a
    # repeat each (a replay adds nothing).
    await store.record_many(recorded[:150])
    for start in range(150, len(recorded), 37):
        await store.record_many(recorded[start : start + 37] + recorded[start : start + 1])
    windows = [
        (T0 - timedelta(days=10), T0 + timedelta(days=10)),  # everything
        (T0 - timedelta(days=2, hours=5, minutes=3), T0 + timedelta(hours=7, seconds=1)),
        (T0 - timedelta(hours=3), T0 + timedelta(hours=2)),  # inside one day
        (T0 - timedelta(days=1, minutes=1), T0 - timedelta(days=1, minutes=-1)),  # across midnight
        (T0.replace(hour=0, minute=0), T0.replace(hour=0, minute=0) + timedelta(days=2)),  # whole days
        # Up to just after the last event: its day's totals stand for the edge (nothing after it).
        (T0 - timedelta(days=1, hours=2), max(e.created_at for e in recorded) + timedelta(seconds=1)),
        (
            _midnight(max(e.created_at for e in recorded)),
            max(e.created_at for e in recorded) + timedelta(seconds=1),
        ),
        (_midnight(T0), T0 + timedelta(hours=1)),  # from midnight to within the day: events after it
    ]
    keys = {
        "api_type": lambda e: e.api_type,
        "model": lambda e: e.model,
        "end_user": lambda e: e.end_user or "",
        "day": lambda e: e.created_at.astimezone(UTC).date().isoformat(),
        "client_model": lambda e: f"{e.client_id}/{e.model}",
        "client_api_type": lambda e: f"{e.client_id}/{e.api_type}",
        "day_api_type": lambda e: f"{e.created_at.astimezone(UTC).date().isoformat()}/{e.api_type}",
    }
    for client_id in ("acme", None):
        for start, end in windows:
            inside = [
                e
                for e in recorded
                if start <= e.created_at < end and (client_id is None or e.client_id == client_id)
            ]
            for group, key_of in keys.items():
                expected: dict[str, tuple[int, int, Decimal, Decimal]] = {}
                for e in inside:
                    n, tokens, cost, usd = expected.get(key_of(e), (0, 0, Decimal(0), Decimal(0)))
                    expected[key_of(e)] = (n + 1, tokens + e.tokens, cost + e.cost, usd + e.cost_usd)
                report = await store.usage_report(client_id, start, end, group)
                got = {
                    r.key: (r.requests, r.input_tokens + r.output_tokens, r.cost, r.cost_usd) for r in report
                }
                assert got == expected, (client_id, start, end, group)
                dearest = sorted(expected, key=lambda k: (-expected[k][3], k))[:3]
                top = await store.usage_report(client_id, start, end, group, top=3)
                assert [r.key for r in top] == dearest, (client_id, start, end, group)
            spent: dict[str, Decimal] = {}
            for e in recorded:
                if e.client_id == "acme" and e.created_at >= start:
                    spent[e.api_type] = spent.get(e.api_type, Decimal(0)) + e.cost
            if client_id == "acme":
                assert await store.spend_by_api_type("acme", start) == dict(sorted(spent.items()))


async def test_the_daily_totals_migration_sums_a_ledger_recorded_before_it(store: Store) -> None:
    await add_client(store)
    for i in range(30):
        at = T0 - timedelta(days=i % 4, minutes=i)
        await store.record(event(f"r{i}", cost="0.000000007", at=at, end_user=None if i % 3 else "u"))
    window = (T0 - timedelta(days=10), T0 + timedelta(days=1))
    before = {g: await store.usage_report("acme", *window, g) for g in ("day", "end_user", "model")}
    async with store.transaction() as conn:  # type: ignore[attr-defined]
        await conn.execute("DROP TABLE usage_daily")  # as it was before migration 14
        await conn.execute("DROP TABLE usage_daily_users")
        await conn.execute("DELETE FROM schema_migrations WHERE version = 14")
    await store.migrate()
    for group, rows in before.items():
        assert await store.usage_report("acme", *window, group) == rows, group
    assert sum(r.requests for r in before["day"]) == 30 and len(before["day"]) == 4
    # Totals that drifted (events written by a process older than them) are summed again.
    async with store.transaction() as conn:  # type: ignore[attr-defined]
        await conn.execute("DELETE FROM usage_daily WHERE day < (SELECT MAX(day) FROM usage_daily)")
        await conn.execute("DELETE FROM usage_daily_users")
    assert await store.usage_report("acme", *window, "day") != before["day"]
    await store.rebuild_daily_totals()
    for group, rows in before.items():
        assert await store.usage_report("acme", *window, group) == rows, group


def _midnight(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
