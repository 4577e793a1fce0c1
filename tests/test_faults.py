"""Faults with real processes: a proxy killed mid-stream, Redis unreachable,
the same request replayed concurrently."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from taximeter.store.factory import open_store
from tests.conftest import REDIS_URL
from tests.fake_upstream import FakeUpstream
from tests.harness import Harness
from tests.processes import Deployment


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
            assert (charged.input_tokens, charged.output_tokens) == (100, 500)  # the reservation's estimate
            assert charged.cost == Decimal(
                "0.026250000"
            )  # (100 x $2.50 + 500 x $10) / 1M = $0.00525, x 5 BRL
            await doomed.start()  # restarted: nothing is charged twice
            await asyncio.sleep(0.5)
            state = await store.get_budget("acme", datetime.now(UTC))
            assert state is not None
            assert (
                await store.ledger_totals("acme", state.period_start)
                == (state.tokens_used, state.cost_used_nanos)
                == (600, 26_250_000)
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
    from taximeter.store.models import UsageEvent

    event = UsageEvent(
        request_id="req_replayed",
        client_id="acme",
        api_type="chat",
        model="gpt-4o",
        endpoint="/v1/chat/completions",
        status=200,
        created_at=clock(),
        currency="BRL",
        exchange_rate=Decimal(5),
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
