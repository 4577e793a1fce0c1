"""Budgets under concurrent calls: reservations bound the overrun, busy
refusals are retried by the SDK, and a dead process's calls are charged."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from taximeter.proxy.gateway.sweeper import sweep
from tests.support.clock import FakeClock
from tests.support.factories import estimated_event, reservation, tts_estimate
from tests.support.fake_upstream import CHAT
from tests.support.harness import Harness

CALL_TOKENS = CHAT["prompt"] + CHAT["completion"]  # what the fake reports for each chat call


async def test_concurrent_calls_stay_within_the_bound(proxy: Harness) -> None:
    # max_tokens 400 bounds each call's estimate: prompt ~3 tokens + 400 output.
    limit = 5 * CALL_TOKENS
    key = await proxy.new_client("acme", mode="tokens", token_limit=limit)
    client = proxy.sdk(key)

    async def call() -> str:
        try:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=400
            )
            return "ok"
        except openai.RateLimitError as exc:
            return "retryable" if exc.response.headers.get("x-should-retry") == "true" else "refused"

    results = await proxy.in_flight_together(call() for _ in range(50))  # the calls overlap
    status = await proxy.status("acme")
    admitted = results.count("ok")
    # The fake always reports 1500 tokens, more than the ~403 estimated: each
    # admitted call overruns its estimate by ~1100, the bound's "excess" term.
    estimate = 403
    assert admitted >= 1 and status["tokens_used"] == admitted * CALL_TOKENS
    assert admitted * estimate < limit + estimate  # every admitted call was within the reservations
    assert "retryable" in results  # the rest were told the limit was only reserved, or spent
    assert status["paused"] is (status["tokens_used"] >= limit)


async def test_sdk_retries_a_busy_refusal_until_it_is_admitted(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=10 * CALL_TOKENS)
    hold = proxy.upstream.hold = asyncio.Event()  # the first call is answered once the second is refused

    async def on_answer(response: httpx.Response) -> None:
        if response.status_code == 429:
            hold.set()

    slow = proxy.sdk(key)
    patient = proxy.sdk(
        key, max_retries=5, http_client=openai.DefaultAsyncHttpxClient(event_hooks={"response": [on_answer]})
    )
    # The first call reserves 10 calls' worth (its max_tokens), leaving no room ...
    first = asyncio.create_task(
        slow.chat.completions.create(model="gpt-4o", messages=[], max_tokens=10 * CALL_TOKENS)
    )
    try:
        await proxy.upstream.reached(1)
        # ... so the second is busy until the first settles, then admitted on a retry.
        second = patient.chat.completions.create(model="gpt-4o", messages=[], max_tokens=CALL_TOKENS + 100)
        await asyncio.wait_for(second, 30)
    finally:
        hold.set()
    await first
    assert len(await proxy.events("acme")) == 2


async def test_reservation_of_a_dead_process_is_charged_at_its_estimate(
    proxy: Harness, clock: FakeClock
) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=10**6)
    await proxy.sdk(key).embeddings.create(model="text-embedding-3-small", input="warm up")
    meter = proxy.services.meter
    orphan = estimated_event(
        "req_orphan",
        clock(),
        input_tokens=10,
        output_tokens=4096,
        cost_usd=Decimal("0.040985"),
        cost=Decimal("0.204925"),
    )
    held = reservation(orphan, clock() + timedelta(seconds=30))  # 204,925,000 nanos
    assert (await meter.gate.admit(held, clock())).outcome == "ok"  # ... then its process died
    assert await sweep(meter) == 0  # not yet expired
    clock.advance(seconds=31)
    assert await sweep(meter) == 1
    assert await sweep(meter) == 0  # charged once
    events = {e["request_id"]: e for e in await proxy.events("acme")}
    charged = events["req_orphan"]
    assert (charged["estimated"], charged["status"], charged["output_tokens"], charged["cost"]) == (
        True,
        0,
        4096,
        "0.204925",
    )
    status = await proxy.status("acme")
    assert status["tokens_used"] == 4106 + 42  # the orphan and the warm-up embedding


@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_two_proxies_sweep_an_orphan_once(
    backend: dict[str, str], aiohttp_server: object, make_proxy: object, clock: FakeClock
) -> None:
    # backend first: its database outlives the second server, which may still be writing at teardown.
    from taximeter.proxy.app import create_app

    first: Harness = await make_proxy()  # type: ignore[operator]
    second = await aiohttp_server(create_app(first.services.settings, clock=clock))  # type: ignore[operator]
    await first.new_client("acme", mode="tokens", token_limit=10**6)
    meter_a = first.services.meter
    from taximeter.proxy.services import SERVICES

    meter_b = second.app[SERVICES].meter
    await meter_a.rebuild("acme", clock())
    await meter_a.gate.admit(
        reservation(tts_estimate("req_orphan2", clock()), clock()), clock()
    )  # 75,000,000 nanos
    clock.advance(seconds=1)
    counts = await asyncio.gather(sweep(meter_a), sweep(meter_b), sweep(meter_a))
    assert sum(counts) == 1
    await meter_b.ledger.flush()
    events = await first.events("acme")
    assert [e["request_id"] for e in events] == ["req_orphan2"]


async def test_an_event_is_written_only_once_the_gate_has_counted_it(
    proxy: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the ledger wrote a call's event while the gate was still to count
    # it. A process killed in between left its reservation held in Redis with
    # its usage in the store; the survivor charged the reservation, found the
    # event recorded, and Redis stayed a call below the ledger for good (a kill
    # -9 under load, about 1 run in 3).
    key = await proxy.new_client("acme", mode="tokens", token_limit=10**6)
    await proxy.sdk(key).embeddings.create(model="text-embedding-3-small", input="warm")  # copy loaded
    meter = proxy.services.meter
    await meter.ledger.flush()
    order: list[str] = []
    gate_settle, record_many = meter.gate.settle, meter.ledger._store.record_many

    async def slow_settle(event: Any, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)  # long past the ledger's linger
        counted = await gate_settle(event, *args, **kwargs)
        order.append(f"gate {event.request_id}")
        return counted

    async def record(events: Any) -> Any:
        order.extend(f"ledger {e.request_id}" for e in events)
        return await record_many(events)

    monkeypatch.setattr(meter.gate, "settle", slow_settle)
    monkeypatch.setattr(meter.ledger._store, "record_many", record)
    response = await proxy.sdk(key).embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="hello"
    )
    await meter.ledger.flush()
    request_id = response.headers["x-taximeter-request-id"]
    assert order == [f"gate {request_id}", f"ledger {request_id}"]
    await proxy.assert_ledger_matches_counters()


async def test_calls_settled_while_the_gate_is_rebuilt_hold_nothing_afterwards(
    make_proxy: Any, clock: FakeClock
) -> None:
    # The in-process gate rebuilds a copy every gate_refresh_s while calls go on;
    # the reservations of calls that settle meanwhile must not stay held.
    proxy: Harness = await make_proxy(gate_refresh_s=1, reserve_output_tokens=1000)
    limit = 10**6
    key = await proxy.new_client("acme", mode="tokens", token_limit=limit)
    client = proxy.sdk(key)
    meter = proxy.services.meter
    rebuilds = 0

    async def caller() -> None:
        for _ in range(15):
            await client.chat.completions.create(model="gpt-4o", messages=[])

    async def ticker(callers: asyncio.Future[Any]) -> None:
        nonlocal rebuilds
        while not callers.done():
            clock.advance(seconds=2)  # the next admission starts a background rebuild
            rebuilds += "acme" in meter._refreshing
            await asyncio.sleep(0.002)

    callers = asyncio.gather(*(caller() for _ in range(8)))
    await asyncio.gather(callers, ticker(callers))
    await meter.ledger.flush()
    used = (await proxy.status("acme"))["tokens_used"]
    assert used == 15 * 8 * CALL_TOKENS
    # Room for one more call: admitted only if no finished call still holds a reservation.
    status, _ = await proxy.admin("PUT", "/admin/budgets/acme", {"mode": "tokens", "token_limit": used + 1})
    assert status == 200
    await client.chat.completions.create(model="gpt-4o", messages=[])
    await proxy.assert_ledger_matches_counters()
