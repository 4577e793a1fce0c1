"""Vector stores through taximeter (spec sections 4b and 5), with the SDK on
both backends: each is its maker's, with its files and searches; searching
is free; storage is charged once per UTC day at the size the upstream shows."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest

from taximeter.proxy.gateway.watcher import watch_due
from taximeter.store.base import StoreUnavailable
from tests.http.test_isolation import refused_unseen, two_tenants
from tests.support.clock import FakeClock
from tests.support.harness import Harness

# File search storage: $0.10 per GB per day, a GB being 2^30 bytes (pricing
# page, "File search storage", checked 2026-12-08). Charged by the MiB-day,
# a part of a MiB as a whole one.
GIB_DAY = Decimal("0.10")
MIB = 2**20


def usd(value: Decimal | str) -> Decimal:
    return Decimal(value).quantize(Decimal("1e-9"))


def day_of(mib: int) -> Decimal:
    return usd(mib * GIB_DAY / 1024)


async def storage_events(proxy: Harness) -> list[tuple[str, Decimal]]:
    events = [e for e in await proxy.events("acme") if e["api_type"] == "vector_store"]
    for event in events:
        assert (event["model"], event["status"], event["estimated"]) == ("vector-store", 200, False), event
    return sorted((str(e["request_id"]), usd(e["cost_usd"])) for e in events)


def set_size(proxy: Harness, store_id: str, size: int) -> None:
    proxy.upstream.vector_stores[store_id]["object"]["usage_bytes"] = size


async def test_a_vector_store_and_its_files_are_their_makers_alone(proxy: Harness) -> None:
    acme, rival = await two_tenants(proxy)
    file_id = (await acme.files.create(file=("notes.txt", b"hello " * 100), purpose="assistants")).id
    store = await acme.vector_stores.create(name="kb", file_ids=[file_id])
    assert store.usage_bytes == 600
    assert [f.id for f in (await acme.vector_stores.files.list(store.id)).data] == [file_id]
    assert [s.id for s in (await acme.vector_stores.list()).data] == [store.id]
    assert (await rival.vector_stores.list()).data == []
    assert (await acme.vector_stores.search(store.id, query="hello")).has_more is False
    await refused_unseen(proxy, rival.vector_stores.retrieve(store.id))
    await refused_unseen(proxy, rival.vector_stores.update(store.id, metadata={"x": "y"}))
    await refused_unseen(proxy, rival.vector_stores.search(store.id, query="hello"))
    await refused_unseen(proxy, rival.vector_stores.files.list(store.id))
    await refused_unseen(proxy, rival.vector_stores.files.retrieve(file_id, vector_store_id=store.id))
    await refused_unseen(proxy, rival.vector_stores.delete(store.id))
    tools: Any = [{"type": "file_search", "vector_store_ids": [store.id]}]
    await refused_unseen(proxy, rival.responses.create(model="gpt-4o", input="hi", tools=tools))
    # Nor may another client put acme's file in a store of its own.
    await refused_unseen(proxy, rival.vector_stores.create(name="mine", file_ids=[file_id]))
    mine = await rival.vector_stores.create(name="mine")
    await refused_unseen(proxy, rival.vector_stores.files.create(vector_store_id=mine.id, file_id=file_id))
    assert [e for e in await proxy.events() if e["api_type"] == "vector_store"] == []  # no day ended yet


async def test_storage_is_charged_once_a_day_at_the_size_it_has(proxy: Harness, clock: FakeClock) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="5.00")
    acme = proxy.sdk(key)
    store = await acme.vector_stores.create(name="kb")  # 2026-03-10 15:00 UTC
    set_size(proxy, store.id, 3 * 2**29)  # 1.5 GiB
    await watch_due(proxy.services)
    assert await storage_events(proxy) == []  # its first day has not ended
    clock.advance(hours=10)  # 03-11, 01:00
    await watch_due(proxy.services)
    await watch_due(proxy.services)  # looked at once a day
    first = (f"{store.id}/storage/2026-03-10", day_of(1536))
    assert first[1] == usd("0.15")
    assert await storage_events(proxy) == [first]
    set_size(proxy, store.id, 2**30 + 1)  # a byte past 1 GiB: 1,025 MiB kept
    clock.advance(days=2)  # 03-13, 01:00: the two days since
    await watch_due(proxy.services)
    later = [(f"{store.id}/storage/2026-03-1{d}", day_of(1025)) for d in (1, 2)]
    assert await storage_events(proxy) == [first, *later]
    await acme.vector_stores.delete(store.id)  # its last day, charged before it goes
    last = (f"{store.id}/storage/2026-03-13", day_of(1025))
    assert await storage_events(proxy) == [first, *later, last]
    clock.advance(days=3)
    await watch_due(proxy.services)
    assert len(await storage_events(proxy)) == 4  # watched no more
    status = await proxy.status("acme")  # in the client's currency: the events' cost, summed
    assert usd(status["cost_used"]) == sum(usd(e["cost"]) for e in await proxy.events("acme"))
    assert sum(cost for _, cost in await storage_events(proxy)) == usd("0.15") + 3 * day_of(1025)
    await proxy.assert_ledger_matches_counters()


async def test_a_store_gone_upstream_is_charged_to_its_last_day_at_its_last_size(
    proxy: Harness, clock: FakeClock
) -> None:
    key = await proxy.new_client("acme")
    acme = proxy.sdk(key)
    store = await acme.vector_stores.create(name="kb")
    set_size(proxy, store.id, MIB)
    assert (await acme.vector_stores.retrieve(store.id)).usage_bytes == MIB  # seen at 1 MiB
    del proxy.upstream.vector_stores[store.id]  # expired, or deleted without taximeter
    clock.advance(days=1)
    await watch_due(proxy.services)
    assert await storage_events(proxy) == [(f"{store.id}/storage/2026-03-10", day_of(1))]
    clock.advance(days=2)
    await watch_due(proxy.services)
    assert len(await storage_events(proxy)) == 1
    assert (await acme.vector_stores.list()).data == []  # gone: no longer listed


async def test_an_expired_store_is_charged_to_the_day_it_expired(proxy: Harness, clock: FakeClock) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    store = await acme.vector_stores.create(name="kb", expires_after={"anchor": "last_active_at", "days": 1})
    set_size(proxy, store.id, 5 * MIB)
    shown = proxy.upstream.vector_stores[store.id]["object"]
    shown.update(status="expired", expires_at=1773306000)  # 2026-03-12 09:00 UTC: kept part of the 12th
    clock.advance(days=4)  # looked at late (the 14th): the days it lived, no more
    await watch_due(proxy.services)
    days = [f"{store.id}/storage/2026-03-{d}" for d in (10, 11, 12)]
    assert await storage_events(proxy) == [(day, day_of(5)) for day in days]
    clock.advance(days=2)
    await watch_due(proxy.services)
    assert len(await storage_events(proxy)) == 3  # watched no more
    await acme.vector_stores.delete(store.id)  # deleted days after: none of them charged
    assert len(await storage_events(proxy)) == 3
    assert (await acme.vector_stores.list()).data == []


async def test_a_client_that_may_not_spend_makes_no_store_and_adds_no_file(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=10)
    acme = proxy.sdk(key)
    file_id = (await acme.files.create(file=("a.txt", b"abc"), purpose="assistants")).id
    store = await acme.vector_stores.create(name="kb")
    await acme.embeddings.create(model="text-embedding-3-small", input="spend it all")  # paused now
    seen = len(proxy.upstream.received)
    with pytest.raises(openai.RateLimitError):
        await acme.vector_stores.create(name="more")
    with pytest.raises(openai.RateLimitError):
        await acme.vector_stores.files.create(vector_store_id=store.id, file_id=file_id)
    assert len(proxy.upstream.received) == seen
    assert list(proxy.upstream.vector_stores) == [store.id]
    await acme.vector_stores.search(store.id, query="still free")  # what adds nothing still works


async def test_a_file_path_named_as_its_store_charges_nothing_on_demand(
    proxy: Harness, clock: FakeClock
) -> None:
    # Before: DELETE .../files/<the store's own id> ran the store's delete
    # charging (today's day at the size of the moment, marked charged).
    acme = proxy.sdk(await proxy.new_client("acme"))
    file_id = (await acme.files.create(file=("a.txt", b"abc"), purpose="assistants")).id
    store = await acme.vector_stores.create(name="kb", file_ids=[file_id])
    with pytest.raises(openai.NotFoundError):  # the upstream's answer: no such file in the store
        await acme.vector_stores.files.delete(store.id, vector_store_id=store.id)
    assert await storage_events(proxy) == []
    # A file's attributes are the client's own data, not references.
    added = await acme.vector_stores.files.update(
        file_id, vector_store_id=store.id, attributes={"file_id": "doc-17"}
    )
    assert added.id == file_id


async def test_a_delete_while_the_watch_is_taken_charges_every_day_once(
    proxy: Harness, clock: FakeClock
) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    store = await acme.vector_stores.create(name="kb")
    set_size(proxy, store.id, MIB)
    clock.advance(days=1)
    await watch_due(proxy.services)  # the 10th charged
    clock.advance(days=2)
    services = proxy.services
    taken = await services.objects.claim_watches(clock(), 10, timedelta(minutes=15))  # a watcher that died
    assert [w.object_id for w in taken] == [store.id]
    await acme.vector_stores.delete(store.id)
    days = [f"{store.id}/storage/2026-03-1{d}" for d in (0, 1, 2, 3)]
    assert await storage_events(proxy) == [(day, day_of(1)) for day in days]
    await proxy.assert_ledger_matches_counters()


async def test_a_store_taximeter_cannot_record_is_not_kept(
    proxy: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the store is down")

    monkeypatch.setattr(proxy.services.objects, "watch", broken)
    with pytest.raises(openai.APIStatusError) as caught:
        await acme.vector_stores.create(name="kb")
    assert caught.value.status_code == 503
    assert proxy.upstream.vector_stores == {}  # deleted upstream again
    assert (await acme.vector_stores.list()).data == []
