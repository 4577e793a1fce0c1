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

from taximeter.pricing import limits
from taximeter.store.factory import open_store
from taximeter.store.redis_gate import RedisGate
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


async def test_two_processes_hold_one_end_users_limit(
    aiohttp_server: Any, tmp_path: Path, empty_pg_url: str, redis_prefix: str
) -> None:
    """200 calls of one end user through two processes against a token
    limit per end user with room for about 10: at most the limit plus one
    estimate is spent, another end user is untouched, and the ledger equals
    the limit's counter in Redis."""
    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    settings = {"database_url": empty_pg_url, "redis_url": REDIS_URL, "redis_prefix": redis_prefix}
    proxies = [Deployment(tmp_path, str(upstream.make_url("/v1")), **settings) for _ in range(2)]
    declared = tmp_path / "limits.toml"
    toml = f'[[limits]]\nname = "per-user"\nmetric = "tokens"\nlimit = {LIMIT}\nwindow = "none"\nper = "end_user"\n'
    await asyncio.to_thread(declared.write_text, toml)
    try:
        key = await proxies[0].new_client("acme")
        await proxies[0].cli("limits", "set", "acme", str(declared))
        await asyncio.gather(*(p.start() for p in proxies))
        clients = [openai.AsyncOpenAI(base_url=f"{p.url}/v1", api_key=key, max_retries=0) for p in proxies]

        async def call(i: int, user: str = "+5511900000001") -> str:
            try:
                await clients[i % 2].chat.completions.create(
                    model="gpt-4o",
                    messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=MAX_TOKENS,
                    user=user,
                )
                return "admitted"
            except openai.RateLimitError as exc:
                assert exc.body["param"] == "per-user"  # type: ignore[index]
                return "refused"

        results = await in_flight_together(fake, (call(i) for i in range(200)))
        assert await call(0, user="+5511900000002") == "admitted"  # another end user, its own counter
        for client in clients:
            await client.close()
        await asyncio.gather(*(p.stop() for p in proxies))
    finally:
        await asyncio.gather(*(p.stop() for p in proxies))

    admitted = results.count("admitted")
    store = await open_store(empty_pg_url)
    try:
        acme = await store.get_client("acme")
        assert acme is not None
        now = datetime.now(UTC)
        [hold] = limits.holds_for(
            acme.terms.limits,
            client_id="acme",
            model="gpt-4o",
            end_user="+5511900000001",
            tokens=0,
            cost_nanos=0,
            timezone="UTC",
            now=now,
        )
        ledger_tokens = await store.limit_used(hold, "acme")
    finally:
        await store.close()
    gate = RedisGate.from_url(REDIS_URL, prefix=redis_prefix)
    try:
        [counter] = await gate.limit_counters([hold])
    finally:
        await gate.close()
    estimate = 1 + MAX_TOKENS
    print(
        f"\nadmitted {admitted} of 200; tokens {ledger_tokens} for a limit of {LIMIT} (bound {LIMIT + estimate})"
    )
    assert counter == (ledger_tokens, 0)  # the counter equals the ledger, nothing left reserved
    assert ledger_tokens == admitted * CALL_TOKENS
    assert ledger_tokens - LIMIT <= estimate
    assert 5 <= admitted <= LIMIT // estimate + 1
