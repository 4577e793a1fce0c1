"""The proxy on a Redis Cluster (``redis_cluster = true``): a private
three-node cluster the run starts itself, with Postgres. Calls through the SDK
are admitted, limited, paused and swept as on one Redis server; the tests
named below are those of the other modules, run here again on the cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from taximeter.proxy.gateway.sweeper import sweep
from taximeter.proxy.services import SERVICES
from taximeter.store.redis_keys import slot_of
from tests.http.test_budgets_e2e import test_each_mode_pauses_when_its_limit_is_reached
from tests.http.test_concurrency import (
    test_concurrent_calls_stay_within_the_bound,
    test_reservation_of_a_dead_process_is_charged_at_its_estimate,
)
from tests.http.test_limits import (
    test_a_lost_counter_is_counted_again_from_the_ledger,
    test_no_more_calls_are_in_flight_than_the_concurrency_limit,
    test_one_end_user_stops_at_its_cap_while_the_others_go_on,
    test_requests_per_minute_answer_with_when_to_retry,
)
from tests.support.clock import FakeClock
from tests.support.factories import reservation, tts_estimate
from tests.support.harness import Harness
from tests.support.shared_services import fresh_pg_database

pytestmark = pytest.mark.slow  # the cluster is three processes

__all__ = [  # collected again here, with this module's backend
    "test_a_lost_counter_is_counted_again_from_the_ledger",
    "test_concurrent_calls_stay_within_the_bound",
    "test_each_mode_pauses_when_its_limit_is_reached",
    "test_no_more_calls_are_in_flight_than_the_concurrency_limit",
    "test_one_end_user_stops_at_its_cap_while_the_others_go_on",
    "test_requests_per_minute_answer_with_when_to_retry",
    "test_reservation_of_a_dead_process_is_charged_at_its_estimate",
]


@pytest.fixture
async def backend(redis_cluster_url: str, pg_template: str | None) -> AsyncIterator[dict[str, Any]]:
    """Postgres and the private cluster, under a key prefix of this test's own."""
    async with fresh_pg_database(pg_template) as url:
        yield {
            "database_url": url,
            "redis_url": redis_cluster_url,
            "redis_cluster": True,
            "redis_prefix": f"t{uuid.uuid4().hex[:12]}:",
        }


async def test_two_proxies_sweep_orphans_of_clients_in_many_slots_once(
    backend: dict[str, Any], aiohttp_server: Any, make_proxy: Any, clock: FakeClock
) -> None:
    """Reservations of a dead process, held by clients all over the cluster's
    slots, are each charged once however many sweepers run at once."""
    from taximeter.proxy.app import create_app

    first: Harness = await make_proxy()
    second = await aiohttp_server(create_app(first.services.settings, clock=clock))
    meter_a, meter_b = first.services.meter, second.app[SERVICES].meter
    assert isinstance(getattr(meter_a.gate, "_redis", None), RedisCluster)
    clients = [f"tenant-{i}" for i in range(12)]
    assert len({slot_of(c) for c in clients}) == len(clients)  # twelve slots, spread over the nodes
    for client in clients:
        await first.new_client(client, mode="tokens", token_limit=10**6)
        await meter_a.rebuild(client, clock())
        held = reservation(tts_estimate(f"req-{client}", clock(), client), clock() + timedelta(seconds=5))
        assert (await meter_a.gate.admit(held, clock())).outcome == "ok"
    assert await sweep(meter_b) == 0  # not yet expired
    clock.advance(seconds=6)
    counts = await asyncio.gather(sweep(meter_a), sweep(meter_b), sweep(meter_a))
    assert sum(counts) == len(clients)
    await meter_b.ledger.flush()
    for client in clients:
        [charged] = await first.events(client)
        assert (charged["request_id"], charged["estimated"], charged["cost"]) == (
            f"req-{client}",
            True,
            "0.075",
        )
        assert (await first.status(client))["tokens_used"] == 0  # characters, not tokens
    await first.assert_ledger_matches_counters()
