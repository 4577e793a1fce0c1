"""Faults in-process: Redis unreachable or flushed mid-traffic, the same
request replayed concurrently. (A proxy killed mid-stream and a Postgres
restarted mid-traffic are in tests/system/test_fault_processes.py.)"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.factories import usage_event
from tests.support.harness import Harness
from tests.support.shared_services import REDIS_URL


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_redis_unreachable_falls_back_to_the_store(make_proxy: Any, tmp_path: Path) -> None:
    proxy: Harness = await make_proxy(
        database_url=f"sqlite:///{tmp_path}/fallback.db", redis_url="redis://127.0.0.1:1/0"
    )
    key = await proxy.new_client("acme", mode="tokens", token_limit=3000)
    client = proxy.sdk(key)
    await client.chat.completions.create(model="gpt-4o", messages=[])  # 1500 of 3000
    await client.chat.completions.create(model="gpt-4o", messages=[])  # reaches the limit
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o", messages=[])
    assert len(await proxy.events("acme")) == 2
    await proxy.assert_ledger_matches_counters()


async def test_replayed_request_id_is_charged_once(proxy: Harness, clock: Any) -> None:
    await proxy.new_client("acme", mode="tokens", token_limit=10**6)
    event = usage_event(
        "req_replayed",
        clock(),
        input_tokens=100,
        output_tokens=20,
        cost_usd=Decimal("0.00045"),
        cost=Decimal("0.00225"),
    )
    meter = proxy.services.meter
    results = await asyncio.gather(*(meter.store.record(event) for _ in range(50)))
    assert sum(r.recorded for r in results) == 1
    status = await proxy.status("acme")
    assert (status["tokens_used"], status["cost_used"]) == (120, "0.00225")


@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_redis_flushed_mid_traffic(proxy: Harness, backend: dict[str, str]) -> None:
    import redis.asyncio as aioredis

    key = await proxy.new_client("acme", mode="tokens", token_limit=6 * 1500)
    client = proxy.sdk(key)
    proxy.upstream.delay_s = 0.02
    redis = aioredis.Redis.from_url(REDIS_URL)

    async def flush_repeatedly() -> None:
        for _ in range(10):
            await asyncio.sleep(0.015)
            keys = [k async for k in redis.scan_iter(match=f"{backend['redis_prefix']}*")]
            if keys:
                await redis.delete(*keys)  # what FLUSHALL does to this proxy's keys

    async def call() -> str:
        try:
            await client.chat.completions.create(model="gpt-4o", messages=[], max_tokens=1500)
            return "admitted"
        except openai.RateLimitError:
            return "refused"
        except openai.InternalServerError as exc:  # the gate flushed faster than it is rebuilt
            assert exc.status_code == 503 and exc.code == "metering_unavailable"
            return "unavailable"

    try:
        results = await asyncio.gather(flush_repeatedly(), *(call() for _ in range(40)))
    finally:
        await redis.aclose()
    admitted = results.count("admitted")
    status = await proxy.status("acme")
    assert status["tokens_used"] == admitted * 1500
    # Calls stay within their estimate (max_tokens): at most one estimate past the limit.
    assert status["tokens_used"] <= 6 * 1500 + 1501
    while (await proxy.status("acme"))["tokens_used"] < 6 * 1500:  # spend what the 503s left
        await client.chat.completions.create(model="gpt-4o", messages=[], max_tokens=1500)
    with pytest.raises(openai.RateLimitError):  # spent: nothing more is admitted, rebuilt or not
        await client.chat.completions.create(model="gpt-4o", messages=[], max_tokens=1500)
    await proxy.assert_ledger_matches_counters()


@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_redis_down_concurrent_calls_hold_the_bound_under_the_row_lock(
    make_proxy: Any, backend: dict[str, str]
) -> None:
    proxy: Harness = await make_proxy(redis_url="redis://127.0.0.1:1/0")  # Postgres up, Redis down
    key = await proxy.new_client("acme", mode="tokens", token_limit=5 * 1500)
    client = proxy.sdk(key)

    async def call() -> bool:
        try:
            await client.chat.completions.create(model="gpt-4o", messages=[], max_tokens=1500)
            return True
        except openai.RateLimitError:
            return False

    results = await proxy.in_flight_together(call() for _ in range(30))
    status = await proxy.status("acme")
    assert status["tokens_used"] == results.count(True) * 1500 <= 5 * 1500 + 1501
    await proxy.assert_ledger_matches_counters()
    await proxy.close()
