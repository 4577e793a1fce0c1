"""What only the production backends (Postgres + Redis) have to show: Redis
state rebuilt from the store, several processes migrating at once, several
proxies sharing one budget, and model routing to several upstreams."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis

from taximeter.proxy.app import create_app
from taximeter.store.factory import open_store
from taximeter.store.migrations import LATEST
from tests.support.clock import FakeClock
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import Harness
from tests.support.shared_services import REDIS_URL


async def test_concurrent_migrations_are_safe(empty_pg_url: str) -> None:
    stores = [await open_store(empty_pg_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        await asyncio.gather(*(s.migrate() for s in stores))
        assert [await s.schema_version() for s in stores] == [LATEST] * 4  # type: ignore[attr-defined]
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_redis_flush_rebuilds_the_gate_from_the_store(proxy: Harness, backend: dict[str, str]) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=1500)
    client = proxy.sdk(key)
    await client.chat.completions.create(model="gpt-4o", messages=[])
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o", messages=[])
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{backend['redis_prefix']}*")]
        assert keys, "the gate keeps its state in Redis"
        await redis.delete(*keys)
    finally:
        await redis.aclose()
    with pytest.raises(openai.RateLimitError):  # rebuilt from Postgres: still paused
        await client.chat.completions.create(model="gpt-4o", messages=[])


@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_two_proxies_share_one_budget(
    backend: dict[str, str], aiohttp_server: Any, make_proxy: Any, clock: FakeClock
) -> None:
    # backend first: its database outlives the second server, which may still be writing at teardown.
    first: Harness = await make_proxy()
    second = await aiohttp_server(create_app(first.services.settings, clock=clock))
    key = await first.new_client("acme", mode="tokens", token_limit=10**6)
    async with openai.AsyncOpenAI(base_url=str(second.make_url("/v1")), api_key=key, max_retries=0) as other:
        await other.embeddings.create(model="text-embedding-3-small", input="x")
        status, _ = await first.admin("POST", "/admin/budgets/acme/pause")  # paused through the first
        assert status == 200
        with pytest.raises(openai.RateLimitError):  # ... refused by the second at once
            await other.embeddings.create(model="text-embedding-3-small", input="x")


async def test_models_route_to_their_upstream(make_proxy: Any) -> None:
    fast, rest = FakeUpstream(), FakeUpstream()
    harness = await make_proxy(
        routes=[({"name": "minis", "models": ["*-mini", "*-mini-*"]}, fast), ({"name": "default"}, rest)]
    )
    key = await harness.new_client("acme")
    client = harness.sdk(key)
    await client.chat.completions.create(model="gpt-4o-mini", messages=[])
    await client.chat.completions.create(model="gpt-4o", messages=[])
    assert [r.json()["model"] for r in fast.received] == ["gpt-4o-mini"]
    assert [r.json()["model"] for r in rest.received] == ["gpt-4o"]
