"""Faults with real processes: a proxy killed mid-stream, Redis unreachable,
the same request replayed concurrently."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from taximeter.store.factory import open_store
from tests.conftest import usage_event
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import Harness
from tests.support.private_services import PrivatePostgres, missing_binaries
from tests.support.processes import Deployment
from tests.support.shared_services import REDIS_URL

MISSING = missing_binaries()  # looked up once, outside any event loop


@pytest.mark.slow
async def test_proxy_killed_mid_stream_is_charged_by_the_survivor(
    aiohttp_server: Any, tmp_path: Path, pg_url: str, redis_prefix: str
) -> None:
    fake = FakeUpstream(gate=asyncio.Event())  # the stream stalls after its first event
    upstream = await aiohttp_server(fake.app())
    settings = {
        "database_url": pg_url,
        "redis_url": REDIS_URL,
        "redis_prefix": redis_prefix,
        "upstream_timeout_s": "2",
        "reservation_grace_s": "1",
        "sweep_interval_s": "0.2",
    }
    doomed, survivor = (Deployment(tmp_path, str(upstream.make_url("/v1")), **settings) for _ in range(2))
    try:
        await doomed.cli("clients", "add", "acme")
        key = (await doomed.cli("keys", "create", "acme")).strip()
        await doomed.cli("budgets", "set", "acme", "--mode", "both", "--tokens", "100000", "--cost", "50")
        await asyncio.gather(doomed.start(), survivor.start())
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{doomed.url}/v1/chat/completions",
                json={
                    "model": "gpt-4o",
                    "stream": True,
                    "max_tokens": 500,
                    "messages": [{"role": "user", "content": "x" * 400}],
                },
                headers={"Authorization": f"Bearer {key}"},
            )
            assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
            await doomed.kill()  # mid-stream
        store = await open_store(pg_url)
        try:
            for _ in range(100):  # the survivor's sweeper charges it once the reservation expires (~3 s)
                events = await store.list_events("acme", 10)
                if events:
                    break
                await asyncio.sleep(0.1)
            [charged] = events
            assert (charged.estimated, charged.status, charged.model) == (True, 0, "gpt-4o")
            # The reservation's estimate: every string at ~4 characters a token
            # ("gpt-4o" 2, "user" 1, the prompt 100), and max_tokens.
            assert (charged.input_tokens, charged.output_tokens) == (103, 500)
            # (103 x $2.50 + 500 x $10) / 1M = $0.0052575, x 5 BRL
            assert charged.cost == Decimal("0.0262875")
            await doomed.start()  # restarted: nothing is charged twice
            await asyncio.sleep(0.5)
            state = await store.get_budget("acme", datetime.now(UTC))
            assert state is not None
            assert (
                await store.ledger_totals("acme", state.period_start)
                == (state.tokens_used, state.cost_used_nanos)
                == (603, 26_287_500)
            )
        finally:
            await store.close()
    finally:
        fake.gate.set()  # type: ignore[union-attr]
        await asyncio.gather(doomed.stop(), survivor.stop())


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


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_postgres_restarted_mid_traffic_loses_and_doubles_nothing(
    make_proxy: Any, backend: dict[str, str]
) -> None:
    if MISSING:
        assert os.environ.get("CI") != "true", f"private servers need: {MISSING}"
        pytest.skip(f"private servers need: {MISSING}")
    async with PrivatePostgres() as pg:  # restarted here: never the machine's shared server
        proxy: Harness = await make_proxy(database_url=await pg.create_database())
        await _restart_mid_traffic(proxy, pg)
        await proxy.close()


async def _restart_mid_traffic(proxy: Harness, pg: PrivatePostgres) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=10**9)
    client = proxy.sdk(key)
    for _ in range(3):  # warm: the gate has its copy
        await client.embeddings.create(model="text-embedding-3-small", input="x")
    restart = asyncio.create_task(pg.restart())
    answered = 0
    for _ in range(30):  # traffic while the server goes down and comes back
        try:
            await client.embeddings.create(model="text-embedding-3-small", input="x")
            answered += 1
        except openai.APIStatusError as exc:
            assert exc.status_code == 503  # metering_unavailable, never unmetered
        await asyncio.sleep(0.05)
    await restart
    for _ in range(100):
        try:
            events = await proxy.events("acme")
            break
        except AssertionError:
            await asyncio.sleep(0.1)
    ids = [e["request_id"] for e in events]
    assert len(ids) == len(set(ids)) == 3 + answered  # every answered call recorded once
    await proxy.assert_ledger_matches_counters()


@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_redis_down_concurrent_calls_hold_the_bound_under_the_row_lock(
    make_proxy: Any, backend: dict[str, str]
) -> None:
    proxy: Harness = await make_proxy(redis_url="redis://127.0.0.1:1/0")  # Postgres up, Redis down
    key = await proxy.new_client("acme", mode="tokens", token_limit=5 * 1500)
    client = proxy.sdk(key)
    proxy.upstream.delay_s = 0.05

    async def call() -> bool:
        try:
            await client.chat.completions.create(model="gpt-4o", messages=[], max_tokens=1500)
            return True
        except openai.RateLimitError:
            return False

    results = await asyncio.gather(*(call() for _ in range(30)))
    status = await proxy.status("acme")
    assert status["tokens_used"] == results.count(True) * 1500 <= 5 * 1500 + 1501
    await proxy.assert_ledger_matches_counters()
    await proxy.close()
