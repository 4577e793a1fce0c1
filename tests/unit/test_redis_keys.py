"""Redis key names (store/redis_keys.py): on a cluster every key one script
touches falls in one hash slot, checked with redis-py's own slot function; on
one server the names are those earlier releases wrote."""

from __future__ import annotations

from datetime import UTC, datetime

from redis.crc import key_slot

from taximeter.pricing import limits
from taximeter.pricing.models import Limit
from taximeter.store.redis_keys import SLOTS, KeyLayout, slot_of, slot_tag


def test_every_slot_has_a_tag_that_falls_in_it() -> None:
    for slot in range(SLOTS):
        assert key_slot(f"x:{{{slot_tag(slot)}}}:y".encode()) == slot


def test_a_clients_keys_share_its_slot_on_a_cluster() -> None:
    layout = KeyLayout("taximeter:", cluster=True)
    now = datetime(2026, 3, 10, tzinfo=UTC)
    day = Limit("day", "cost", 10**9, window="daily", per="end_user")
    for client in ("acme", "a", "tenant-42", "x" * 63):
        [hold] = limits.holds_for(
            (day,),
            client_id=client,
            model="gpt-4o",
            end_user="+5511",
            tokens=1,
            cost_nanos=1,
            timezone="UTC",
            now=now,
        )
        keys = [*layout.settle_keys(client), layout.counter(hold.key)]
        assert {key_slot(k.encode()) for k in keys} == {slot_of(client)}, keys
        assert layout.shard(client) == slot_tag(slot_of(client))


def test_one_server_keeps_the_names_of_earlier_releases() -> None:
    layout = KeyLayout("tx:", cluster=False)
    assert layout.settle_keys("acme") == [
        "tx:budget:acme",
        "tx:held:acme",
        "tx:expiry",
        "tx:unrecorded",
        "tx:unrecorded:due",
    ]
    assert layout.shard("acme") == ""
