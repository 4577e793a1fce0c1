"""The fault scenarios with real processes, shared by the tests
(tests/system/test_fault_processes.py) and ``python -m tests.support.fault_runs``:
a proxy killed with SIGKILL under load, and Redis killed and restarted
mid-traffic. Only processes they start are killed, by pid."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from taximeter.proxy.app import create_app
from taximeter.proxy.settings import Settings
from taximeter.store.factory import open_store
from tests.support.fake_upstream import UPSTREAM_KEY, FakeUpstream
from tests.support.harness import ADMIN_TOKEN, Harness
from tests.support.private_services import PrivateRedis
from tests.support.processes import Deployment

Serve = Callable[[web.Application], Awaitable[TestServer]]  # aiohttp_server, or the runner's own
TOKENS_PER_CALL = 1_000  # each call sends (and the fake reports) this many embedding tokens


def exact_embeddings(delay_s: float = 0.0, slow: asyncio.Event | None = None) -> Any:
    """An upstream whose usage is exactly the request's token count (so every
    call stays within its estimate, and the README's overrun bound applies);
    calls take ``delay_s``, and calls from end user "slow" wait for ``slow``."""

    async def script(request: web.Request, raw: bytes) -> web.StreamResponse:
        body = await request.json()
        if slow is not None and body.get("user") == "slow":
            await slow.wait()
        elif delay_s:
            await asyncio.sleep(delay_s)
        count = sum(len(x) for x in body["input"])
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.1]}],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": count, "total_tokens": count},
            }
        )

    return script


async def embed(http: aiohttp.ClientSession, url: str, key: str, user: str = "") -> tuple[int, str | None]:
    """One call; its status and request id (0 when the connection broke)."""
    body: dict[str, Any] = {"model": "text-embedding-3-small", "input": [[1] * TOKENS_PER_CALL]}
    if user:
        body["user"] = user
    try:
        async with http.post(
            f"{url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            await resp.read()
            return resp.status, resp.headers.get("X-Taximeter-Request-Id")
    except (aiohttp.ClientError, TimeoutError):
        return 0, None


async def kill_under_load(
    tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str, serve: Serve
) -> dict[str, int]:
    """SIGKILL a proxy with calls in flight; a survivor sweeps. The figures."""
    fake = FakeUpstream(script=exact_embeddings())
    upstream_url = str((await serve(fake.app())).make_url("/v1"))
    settings = {
        "database_url": pg_url,
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        "upstream_timeout_s": "2",
        "reservation_grace_s": "1",
        "sweep_interval_s": "0.2",
    }
    doomed, survivor = (Deployment(tmp_path, upstream_url, **settings) for _ in range(2))
    key = await doomed.new_client("acme", "--mode", "tokens", "--tokens", "100000000")
    await doomed.start()
    answered: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:

            async def worker() -> None:
                while True:
                    status, request_id = await embed(http, doomed.url, key)
                    if status != 200:
                        return
                    answered.append(str(request_id))

            workers = [asyncio.create_task(worker()) for _ in range(16)]
            await fake.reached(300, timeout_s=60)
            await doomed.kill()
            await asyncio.gather(*workers)
        await survivor.start()
        return await settled_figures(pg_url, redis_url, redis_prefix, len(fake.received), answered)
    finally:
        await asyncio.gather(doomed.stop(), survivor.stop())


async def settled_figures(
    pg_url: str, redis_url: str, redis_prefix: str, reached: int, answered: list[str]
) -> dict[str, int]:
    """Wait for the survivor's sweeps to record everything, then count."""
    store = await open_store(pg_url)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(300):
            events = await store.list_events("acme", 100_000)
            pending = await redis.zcard(f"{redis_prefix}expiry") + await redis.zcard(
                f"{redis_prefix}unrecorded:due"
            )
            if len(events) >= reached and pending == 0:
                break
            await asyncio.sleep(0.05)
        # A claimed reservation leaves the expiry index before its event is
        # durable: settled is when the ledger stops changing over a few sweeps.
        for _ in range(40):
            await asyncio.sleep(0.5)
            again = await store.list_events("acme", 100_000)
            if len(again) == len(events):
                break
            events = again
        recorded = {e.request_id: e for e in events}
        state = await store.get_budget("acme", datetime.now(UTC))
        assert state is not None
        ledger_tokens, _ = await store.ledger_totals("acme", state.period_start)
        gate_tokens = await redis.hget(f"{redis_prefix}budget:acme", "t")
        return {
            "reached_upstream": reached,
            "answered": len(answered),
            "recorded": len(recorded),
            "answered_missing": sum(1 for r in answered if r not in recorded),
            "answered_estimated": sum(1 for r in answered if r in recorded and recorded[r].estimated),
            "ledger_tokens": ledger_tokens,
            "counter_tokens": state.tokens_used,
            "gate_tokens": -1 if gate_tokens is None else int(gate_tokens),
            "pending": pending,
        }
    finally:
        await redis.aclose()
        await store.close()


async def redis_restart_overrun(
    pg_url: str,
    redis: PrivateRedis,
    serve: Serve,
    limit: int,
    *,
    slow_through: str = "redis",
    processes: int = 1,
) -> int:
    """Calls against a token limit while Redis is killed and restarted; tokens
    spent past the limit. Slow calls are admitted through Redis before it dies
    (``slow_through="redis"``), or through the store while it is down; fast
    ones run until the budget pauses, through the other one. With two
    ``processes`` (two apps, as two proxy processes would be), the slow calls
    go to one and the fast ones to the other."""
    # Slow calls admitted through Redis are still in flight while fast ones are
    # admitted through the store: the store must count the slow ones. The slow
    # calls are answered only once the fast ones have taken all the room left.
    slow_answered = asyncio.Event()
    fake = FakeUpstream(script=exact_embeddings(delay_s=0.01, slow=slow_answered))
    upstream = await serve(fake.app())
    settings = Settings(
        database_url=pg_url,
        redis_url=redis.url,
        upstream_url=str(upstream.make_url("/v1")),
        upstream_api_key=UPSTREAM_KEY,
        admin_token=ADMIN_TOKEN,
    )
    proxies = [
        Harness(server=await serve(create_app(settings)), upstream=fake, http=aiohttp.ClientSession())
        for _ in range(processes)
    ]
    slow_proxy, proxy = proxies[0], proxies[-1]
    try:
        key = await proxy.new_client("acme", mode="tokens", token_limit=limit)
        slow_in_flight, room_taken, refused = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def worker() -> None:
            await slow_in_flight.wait()
            while not refused.is_set():
                status, _ = await embed(proxy.http, proxy.url, key)
                if status == 429:
                    room_taken.set()  # busy (the slow calls hold the rest), or spent
                    if (await proxy.status("acme"))["paused"]:
                        refused.set()

        async def fault() -> None:
            if slow_through == "store":
                await redis.kill()
            slow = [
                asyncio.create_task(embed(slow_proxy.http, slow_proxy.url, key, "slow")) for _ in range(8)
            ]
            try:
                await fake.reached(8)
                if slow_through == "store":
                    await redis.start()
                    slow_in_flight.set()  # fast calls go through the rebuilt copy
                    await room_taken.wait()
                else:
                    await redis.kill()
                    slow_in_flight.set()
                    await room_taken.wait()  # fast calls went through the store while Redis was gone
                    await redis.start()
            finally:
                slow_answered.set()
            await asyncio.gather(*slow)

        await asyncio.wait_for(asyncio.gather(fault(), *(worker() for _ in range(8))), 60)
        for each in proxies:  # every process's events durable before the count is read
            await each.assert_ledger_matches_counters()
        status = await proxy.status("acme")
        return int(status["tokens_used"]) - limit
    finally:
        for each in proxies:
            await each.close()
