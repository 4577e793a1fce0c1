"""Several processes on Postgres and Redis: 200 concurrent SDK calls through
two `taximeter serve` processes, at a budget with room for about 10 calls (the
admitted count and the final overrun stay within the README's bound), and one
coherent /metrics scrape across two worker processes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest

from taximeter.store.factory import open_store
from tests.support.fake_upstream import CHAT, EMBEDDING_TOKENS, FakeUpstream
from tests.support.metrics import samples, scrape, value
from tests.support.processes import Deployment
from tests.support.shared_services import REDIS_URL
from tests.support.waiting import in_flight_together

pytestmark = pytest.mark.slow  # starts real processes

CALL_TOKENS = CHAT["prompt"] + CHAT["completion"]  # 1500, what every call reports
MAX_TOKENS = CALL_TOKENS  # each call bounds its output, so it stays within its estimate
LIMIT = 10 * CALL_TOKENS


async def test_two_processes_hold_one_budget(
    aiohttp_server: Any, tmp_path: Path, empty_pg_url: str, redis_prefix: str
) -> None:
    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    settings = {"database_url": empty_pg_url, "redis_url": REDIS_URL, "redis_prefix": redis_prefix}
    proxies = [Deployment(tmp_path, str(upstream.make_url("/v1")), **settings) for _ in range(2)]
    try:
        key = await proxies[0].new_client("acme", "--mode", "tokens", "--tokens", str(LIMIT))
        await asyncio.gather(*(p.start() for p in proxies))
        clients = [openai.AsyncOpenAI(base_url=f"{p.url}/v1", api_key=key, max_retries=0) for p in proxies]

        async def call(i: int) -> str:
            try:
                await clients[i % 2].chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=MAX_TOKENS
                )
                return "admitted"
            except openai.RateLimitError:
                return "refused"

        results = await in_flight_together(fake, (call(i) for i in range(200)))  # the calls overlap
        for client in clients:
            await client.close()
        await asyncio.gather(*(p.stop() for p in proxies))  # SIGTERM: both drain and flush their ledgers
    finally:
        await asyncio.gather(*(p.stop() for p in proxies))

    admitted = results.count("admitted")
    store = await open_store(empty_pg_url)
    try:
        state = await store.get_budget("acme", datetime.now(UTC))
        assert state is not None
        ledger_tokens, ledger_cost = await store.ledger_totals("acme", state.period_start)
    finally:
        await store.close()
    estimate = 1 + MAX_TOKENS  # "Hi" is one token; the output bound is the rest
    overrun = state.tokens_used - LIMIT
    print(
        f"\nadmitted {admitted} of 200; tokens {state.tokens_used} for a limit of {LIMIT}; overrun {overrun} (bound {estimate})"
    )
    assert (ledger_tokens, ledger_cost) == (state.tokens_used, state.cost_used_nanos)  # ledger = counters
    assert state.tokens_used == admitted * CALL_TOKENS == len(fake.received) * CALL_TOKENS
    assert overrun <= estimate  # README: at most limit + the largest single estimate
    assert admitted <= LIMIT // estimate + 1
    assert admitted >= 5  # the budget did admit calls while it had room
    assert state.paused or state.tokens_used + estimate > LIMIT


async def test_two_workers_give_one_coherent_scrape(
    aiohttp_server: Any, tmp_path: Path, empty_pg_url: str, redis_prefix: str
) -> None:
    upstream = await aiohttp_server(FakeUpstream().app())
    served = Deployment(
        tmp_path,
        str(upstream.make_url("/v1")),
        database_url=empty_pg_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        workers="2",
    )
    try:
        key = await served.new_client("acme")
        await served.start()
        async with openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0) as client:
            await asyncio.gather(
                *(client.embeddings.create(model="text-embedding-3-small", input="x") for _ in range(40))
            )
        # Whichever worker answers the scrape, it counts every worker's calls.
        for _ in range(6):
            _, text = await scrape(served.url)
            m = samples(text)
            assert (
                value(
                    m,
                    "taximeter_requests_total",
                    client="acme",
                    api_type="embeddings",
                    model="text-embedding-3-small",
                    status="200",
                )
                == 40
            )
            assert (
                value(
                    m,
                    "taximeter_tokens_total",
                    client="acme",
                    api_type="embeddings",
                    model="text-embedding-3-small",
                    kind="input",
                )
                == 40 * EMBEDDING_TOKENS
            )
    finally:
        await served.stop()
