"""Faults with real processes on Postgres + Redis: a proxy killed with SIGKILL
under load, and a private Redis killed and restarted mid-traffic.

The scenarios are in tests/support/fault_scenarios.py; short runs here,
``python -m tests.support.fault_runs`` repeats them and prints the figures.
Only processes these tests start are killed, by pid.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.fault_scenarios import TOKENS_PER_CALL, kill_under_load, redis_restart_overrun
from tests.support.private_services import PrivateRedis
from tests.support.shared_services import REDIS_URL

pytestmark = pytest.mark.slow  # starts real processes


async def test_kill_9_under_load_loses_nothing(
    aiohttp_server: Any, tmp_path: Path, pg_url: str, redis_prefix: str
) -> None:
    """Before: 34 of 1,206 calls lost on Postgres + Redis (the reservation was
    swapped for usage before the event was durable)."""
    figures = await kill_under_load(tmp_path, pg_url, REDIS_URL, redis_prefix, aiohttp_server)
    assert figures["pending"] == 0
    # Every call the upstream saw is in the ledger: the ones answered exactly,
    # the ones cut by the kill at their reservation.
    assert figures["answered_missing"] == 0 and figures["answered_estimated"] == 0
    assert figures["recorded"] >= figures["reached_upstream"]
    # Calls admitted but not yet forwarded when the process died are charged
    # too (it cannot be known that they were not sent): at most the 16 in flight.
    assert figures["recorded"] - figures["reached_upstream"] <= 16
    assert figures["ledger_tokens"] == figures["counter_tokens"] == figures["gate_tokens"]


@pytest.mark.parametrize("slow_through", ["redis", "store"])
async def test_redis_restart_mid_traffic_holds_the_overrun_bound(
    aiohttp_server: Any, pg_url: str, slow_through: str
) -> None:
    """Before: a Redis restart mid-traffic overran by 14-27 calls (bound: one
    call's estimate); here 8 calls' worth, each way, before the fix."""
    if not await asyncio.to_thread(shutil.which, "redis-server"):
        assert os.environ.get("CI") != "true", "redis-server is needed under CI"
        pytest.skip("redis-server is not installed")
    async with PrivateRedis() as redis:
        overrun = await redis_restart_overrun(
            pg_url, redis, aiohttp_server, limit=20 * TOKENS_PER_CALL, slow_through=slow_through
        )
    assert overrun <= TOKENS_PER_CALL  # limit + the largest single estimate


async def test_redis_outage_across_processes_holds_the_stated_bound(aiohttp_server: Any, pg_url: str) -> None:
    """The README's bound with several processes: a process that has not yet
    noticed the outage has not moved its calls in flight into the store, so
    the bound grows by those calls' estimates (here 8 slow calls in one
    process while the other admits through the store), and by no more."""
    if not await asyncio.to_thread(shutil.which, "redis-server"):
        assert os.environ.get("CI") != "true", "redis-server is needed under CI"
        pytest.skip("redis-server is not installed")
    async with PrivateRedis() as redis:
        overrun = await redis_restart_overrun(
            pg_url, redis, aiohttp_server, limit=20 * TOKENS_PER_CALL, processes=2
        )
    assert overrun <= TOKENS_PER_CALL + 8 * TOKENS_PER_CALL
