"""Redis memory for per-end-user limit counters: ``python -m bench.limit_keys``.

Admits and settles one call for each of N distinct end users (default 100,000)
of one client with a daily cost cap per end user, through the Redis gate on
127.0.0.1 under a private key prefix, then reports the Redis memory the
counters take, how many keys there are, and that each expires with its window
(an hour after it ends). Everything it wrote is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import redis.asyncio as aioredis

from taximeter.pricing import limits
from taximeter.pricing.models import Limit, Reservation, UsageEvent
from taximeter.store.redis_gate import RedisGate

REDIS = "redis://127.0.0.1:6379/0"
_CAP = Limit("per-user", "cost", 2 * 10**9, "daily", per="end_user")


async def measure(users: int, batch: int) -> dict[str, float]:
    prefix = f"bench-limits-{uuid.uuid4().hex[:8]}:"
    gate = RedisGate.from_url(REDIS, prefix=prefix)
    plain = aioredis.Redis.from_url(REDIS)
    now = datetime.now(UTC)
    try:
        await gate.load("acme", None, now)
        before = int((await plain.info("memory"))["used_memory"])
        started = time.perf_counter()
        for first in range(0, users, batch):
            await asyncio.gather(*(_one_call(gate, n, now) for n in range(first, min(first + batch, users))))
        elapsed = time.perf_counter() - started
        after = int((await plain.info("memory"))["used_memory"])
        keys = [k async for k in plain.scan_iter(match=f"{prefix}lim:*", count=10_000)]
        sample = keys[: min(len(keys), 100)]
        ttls = [await plain.ttl(k) for k in sample]
        return {
            "end_users": users,
            "counter_keys": len(keys),
            "redis_mb": (after - before) / 2**20,
            "bytes_per_end_user": (after - before) / users,
            "min_ttl_s": min(ttls),
            "max_ttl_s": max(ttls),
            "calls_per_s": users / elapsed,
        }
    finally:
        async for key in plain.scan_iter(match=f"{prefix}*", count=10_000):
            await plain.delete(key)
        await plain.aclose()
        await gate.close()


async def _one_call(gate: RedisGate, n: int, now: datetime) -> None:
    user = f"+55119{n:08d}"
    event = UsageEvent(
        request_id=f"r{n}",
        client_id="acme",
        api_type="chat",
        model="gpt-4o",
        endpoint="/v1/chat/completions",
        status=200,
        created_at=now,
        currency="BRL",
        exchange_rate=Decimal(5),
        end_user=user,
        input_tokens=10,
        cost=Decimal("0.001"),
        estimated=True,
    )
    holds = limits.holds_for(
        (_CAP,),
        client_id="acme",
        model="gpt-4o",
        end_user=user,
        tokens=10,
        cost_nanos=10**6,
        timezone="UTC",
        now=now,
    )
    reservation = Reservation(event, 10**6, now, holds)
    if (await gate.admit(reservation, now)).outcome == "miss":
        await gate.load_limits([(holds[0], 0)], now)  # a new end user: nothing in the ledger yet
        await gate.admit(reservation, now)
    await gate.settle(event, 10**6, now)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limit_keys", description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200, help="calls in flight at once")
    args = parser.parse_args()
    for name, value in asyncio.run(measure(args.users, args.batch)).items():
        print(f"{name}: {value:,.1f}" if isinstance(value, float) else f"{name}: {value:,}")


if __name__ == "__main__":
    main()
