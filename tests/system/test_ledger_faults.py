"""The ledger writer under faults, against a private Postgres of this module's
own (connections terminated mid-transaction, the server stopped and started)
and against SQLite: it never dies or wedges, loses and doubles nothing, sets
refused events aside, and lets go at shutdown when the store stays down."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from taximeter.pricing.models import UsageEvent
from taximeter.store.base import DataRejected, RecordResult, Store
from taximeter.store.ledger import LedgerWriter
from taximeter.store.postgres import PostgresStore
from taximeter.store.sql import SqlStore
from taximeter.store.sql import ledger as sql_ledger
from taximeter.store.sqlite import SqliteStore
from tests.support.availability import unavailable
from tests.support.clock import FakeClock
from tests.support.factories import T0, seeded, usage_event
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import Harness
from tests.support.metrics import samples
from tests.support.private_services import PrivatePostgres, PrivateRedis, missing_binaries
from tests.support.processes import Deployment

# The tests on the private server, or with a process, are marked slow; those on SQLite are not.
MISSING = missing_binaries()  # looked up once, outside any event loop


def require_private_services() -> None:
    if not MISSING:
        return
    unavailable(f"private servers need: {', '.join(MISSING)}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def private_pg() -> AsyncIterator[PrivatePostgres | None]:
    """One private server for the module, started by the first test that
    needs it; each test has its own database."""
    if MISSING:
        yield None
        return
    server = PrivatePostgres()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def pg(private_pg: PrivatePostgres | None) -> PrivatePostgres:
    require_private_services()
    assert private_pg is not None
    await private_pg.start()  # a test that stopped it and failed leaves it stopped
    return private_pg


@pytest.fixture
async def private_db(pg: PrivatePostgres) -> str:
    """The URL of a new database on the private server."""
    return await pg.create_database()


@pytest.fixture
async def pg_store(private_db: str) -> AsyncIterator[SqlStore]:
    store = await seeded(await PostgresStore.open(private_db, max_size=4))
    try:
        yield store
    finally:
        await asyncio.wait_for(store.close(), 30)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
async def any_store(
    request: pytest.FixtureRequest, tmp_path: Path, private_pg: PrivatePostgres | None
) -> AsyncIterator[SqlStore]:
    if request.param == "sqlite":
        store = await seeded(await SqliteStore.open(f"sqlite:///{tmp_path}/ledger.db"))
        try:
            yield store
        finally:
            await store.close()
        return
    require_private_services()
    assert private_pg is not None
    await private_pg.start()
    store = await seeded(await PostgresStore.open(await private_pg.create_database(), max_size=4))
    try:
        yield store
    finally:
        await asyncio.wait_for(store.close(), 30)


class Quarantined(list[tuple[UsageEvent, str]]):
    """What ``on_quarantined`` was told (app.py counts it in the metric)."""

    def __call__(self, event: UsageEvent, error: str) -> None:
        self.append((event, error))


@pytest.fixture
async def make_writer() -> AsyncIterator[Callable[..., LedgerWriter]]:
    writers: list[LedgerWriter] = []

    def make(store: Store, **options: Any) -> LedgerWriter:
        writer = LedgerWriter(store, **{"retry_max_s": 0.2, **options})
        writer.start()
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        await writer.close(timeout_s=5)


def event(n: int, **fields: Any) -> UsageEvent:
    """Event ``n`` of acme: n+1 input tokens, (n+1) nano-cents... distinct sums."""
    values: dict[str, Any] = {"input_tokens": n + 1, "output_tokens": 2, "cost": Decimal(n + 1) / 1000}
    return usage_event(f"req-{n:05d}", T0 + timedelta(milliseconds=n), **{**values, **fields})


async def assert_exactly_once(store: Store, request_ids: list[str]) -> None:
    """Every event in the ledger once, nothing else, and the counters equal the ledger."""
    events = await store.list_events("acme", 100_000)
    assert sorted(e.request_id for e in events) == sorted(request_ids)
    [state] = await store.list_budgets(T0)
    assert await store.ledger_totals("acme", state.period_start) == (state.tokens_used, state.cost_used_nanos)


async def quarantine_rows(store: SqlStore) -> dict[str, tuple[str, str]]:
    async with store.connection() as conn:
        rows = await conn.fetchall("SELECT request_id, payload, error FROM quarantined_events")
    return {r["request_id"]: (r["payload"], r["error"]) for r in rows}


# -- the store down or dropping connections -----------------------------------------


@pytest.mark.slow
async def test_connections_terminated_mid_transaction_lose_and_double_nothing(
    pg: PrivatePostgres,
    private_db: str,
    pg_store: SqlStore,
    make_writer: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer: LedgerWriter = make_writer(pg_store, linger_s=0.001)
    database = private_db.rsplit("/", 1)[1]
    ended = 0
    submitting = True

    async def terminate_repeatedly() -> None:
        nonlocal ended
        while submitting:
            ended += await pg.terminate_connections(database)
            await asyncio.sleep(0.003)

    terminator = asyncio.create_task(terminate_repeatedly())
    with caplog.at_level(logging.WARNING, logger="taximeter.ledger"):
        for n in range(500):
            await writer.submit(event(n))
            if n % 5 == 4:
                await asyncio.sleep(0.002)  # a stream, not one batch
        submitting = False
        await terminator
        await asyncio.wait_for(writer.flush(), 30)
    assert ended > 0 and any(r.message == "ledger_retry" for r in caplog.records)  # the faults did land
    assert writer.alive and writer.pending == 0
    await assert_exactly_once(pg_store, [f"req-{n:05d}" for n in range(500)])
    [state] = await pg_store.list_budgets(T0)
    assert state.tokens_used == sum(n + 1 + 2 for n in range(500))


@pytest.mark.slow
async def test_postgres_stopped_and_started_while_events_flow(
    pg: PrivatePostgres, pg_store: SqlStore, make_writer: Any
) -> None:
    writer: LedgerWriter = make_writer(pg_store)
    submitted = 0

    async def submit(count: int) -> None:
        nonlocal submitted
        for _ in range(count):
            await writer.submit(event(submitted))
            submitted += 1
            await asyncio.sleep(0.002)

    await submit(50)
    await asyncio.wait_for(writer.flush(), 10)
    await pg.stop()
    down_until = time.monotonic() + 2
    while time.monotonic() < down_until:  # ~2 s of traffic while the server is down
        await submit(10)
    assert writer.pending > 0  # held in memory, not lost
    flushed = asyncio.create_task(writer.flush())
    await pg.start()
    restarted = time.monotonic()
    await submit(50)
    await asyncio.wait_for(flushed, 15)
    assert time.monotonic() - restarted < 5  # once it is back, within one backoff step
    await asyncio.wait_for(writer.flush(), 15)
    assert writer.alive and writer.pending == 0
    await assert_exactly_once(pg_store, [f"req-{n:05d}" for n in range(submitted)])


@pytest.mark.slow
async def test_close_with_the_store_down_returns_within_its_timeout(
    pg: PrivatePostgres, pg_store: SqlStore, make_writer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    writer: LedgerWriter = make_writer(pg_store)
    await writer.submit(event(0))
    await asyncio.wait_for(writer.flush(), 10)
    await pg.stop()
    for n in range(1, 21):
        await writer.submit(event(n))
    with caplog.at_level(logging.ERROR, logger="taximeter.ledger"):
        started = time.monotonic()
        await asyncio.wait_for(writer.close(timeout_s=1.0), 10)
        assert time.monotonic() - started < 3
    [record] = [r for r in caplog.records if r.message == "ledger_unrecorded"]
    assert record.events == 20  # type: ignore[attr-defined]
    assert not writer.alive
    started = time.monotonic()
    await asyncio.wait_for(pg_store.close(), 15)  # the pool of a server gone does not hold up exit either
    assert time.monotonic() - started < 12
    await pg.start()


async def test_close_with_the_store_down_on_sqlite_returns_too(
    tmp_path: Path, make_writer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = await seeded(await SqliteStore.open(f"sqlite:///{tmp_path}/ledger.db"))
    writer: LedgerWriter = make_writer(store)
    await store.close()  # every write now fails: "SQLite store is closed"
    await writer.submit(event(0))
    with caplog.at_level(logging.ERROR, logger="taximeter.ledger"):
        await asyncio.wait_for(writer.close(timeout_s=0.5), 10)
    assert [r.events for r in caplog.records if r.message == "ledger_unrecorded"] == [1]  # type: ignore[attr-defined]


# -- poison events ------------------------------------------------------------------


def poison(store: SqlStore) -> list[UsageEvent]:
    """Events no store keeps, whatever the proxy's edge let through."""
    kinds = [
        event(900, input_tokens=2**63),  # past BIGINT, past SQLite's 64-bit integers
        event(901, cost=Decimal("1e25")),  # past any money column (the store's own check)
        event(902, cost=Decimal("NaN")),  # likewise
    ]
    if isinstance(store, SqliteStore):
        kinds.append(event(903, cost=Decimal("1e12")))  # 1e21 nanos: past 64 bits
    return kinds


async def test_poison_events_are_quarantined_and_the_rest_recorded(
    any_store: SqlStore, make_writer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    told = Quarantined()
    recorded: list[str] = []

    async def on_recorded(e: UsageEvent, result: RecordResult) -> None:
        recorded.append(e.request_id)

    writer: LedgerWriter = make_writer(any_store, on_quarantined=told, on_recorded=on_recorded)
    kinds = poison(any_store)
    good = [event(n) for n in range(40)]
    batch = good[:10] + kinds[:1] + good[10:30] + kinds[1:] + good[30:]
    bad = {e.request_id: e for e in kinds}
    with caplog.at_level(logging.INFO, logger="taximeter.ledger"):
        for e in batch:  # no await yields: one batch
            await writer.submit(e)
        await asyncio.wait_for(writer.flush(), 30)
    assert writer.alive and writer.pending == 0  # a quarantined event counts as written
    await assert_exactly_once(any_store, [e.request_id for e in good])
    assert sorted(recorded) == sorted(e.request_id for e in good)
    rows = await quarantine_rows(any_store)
    assert set(rows) == set(bad) == {e.request_id for e, _ in told}
    for request_id, (payload, error) in rows.items():
        kept = UsageEvent.from_json(payload)  # the event as it came, to replay once fixed
        assert kept.request_id == request_id and (kept == bad[request_id] or kept.cost.is_nan())
        assert "refused a value" in error or "within the ledger's range" in error
    logged = [r for r in caplog.records if r.message == "ledger_event_quarantined"]
    assert {r.request_id for r in logged} == set(bad)  # type: ignore[attr-defined]
    assert {r.client for r in logged} == {"acme"}  # type: ignore[attr-defined]
    # The writer goes on: the next events are recorded.
    for n in range(100, 105):
        await writer.submit(event(n))
    await asyncio.wait_for(writer.flush(), 10)
    await assert_exactly_once(
        any_store, [e.request_id for e in good] + [f"req-{n:05d}" for n in range(100, 105)]
    )


async def test_nul_and_lone_surrogates_are_stripped_at_the_store_edge(
    any_store: SqlStore, make_writer: Any
) -> None:
    writer: LedgerWriter = make_writer(any_store, on_quarantined=Quarantined())
    await writer.submit(event(1, end_user="ali\x00ce", model="gpt-4o\ud800"))
    await writer.submit(event(2, conversation="c\udfff\x00onv"))
    await asyncio.wait_for(writer.flush(), 10)
    first, second = sorted(await any_store.list_events("acme", 10), key=lambda e: e.request_id)
    assert (first.end_user, first.model, second.conversation) == ("alice", "gpt-4o", "conv")
    assert await quarantine_rows(any_store) == {}


async def test_poison_that_bypasses_the_sanitiser_is_quarantined_by_the_driver_error(
    any_store: SqlStore, make_writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_ledger, "sanitised", lambda e: e)  # as if the store's own guard missed them
    told = Quarantined()
    writer: LedgerWriter = make_writer(any_store, on_quarantined=told)
    bad = [event(900, model="gpt-4o\ud800")]  # not UTF-8: asyncpg / sqlite3 cannot encode it
    if isinstance(any_store, PostgresStore):
        bad.append(event(901, end_user="a\x00b"))  # Postgres text holds no NUL (22021)
        bad.append(event(902, cost=Decimal("1e22")))  # past NUMERIC(30, 9) (22003)
    good = [event(n) for n in range(10)]
    for e in [*good[:5], *bad, *good[5:]]:
        await writer.submit(e)
    await asyncio.wait_for(writer.flush(), 30)
    assert writer.alive and writer.pending == 0
    await assert_exactly_once(any_store, [e.request_id for e in good])
    rows = await quarantine_rows(any_store)
    assert set(rows) == {e.request_id for e in bad} == {e.request_id for e, _ in told}
    assert all("refused a value" in error for _, error in rows.values())
    nul_escaped = [payload for payload, _ in rows.values() if "a\\u0000b" in payload]
    assert len(nul_escaped) == isinstance(any_store, PostgresStore)  # stored as text, escaped


class _Breaking:
    """A store whose record_many fails with a bug-like error on one event."""

    def __init__(self, store: SqlStore, poison_id: str) -> None:
        self._store = store
        self._poison_id = poison_id
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def record_many(self, events: list[UsageEvent]) -> list[RecordResult]:
        self.calls += 1
        if any(e.request_id == self._poison_id for e in events):
            raise RuntimeError("an unexpected bug")
        return await self._store.record_many(events)


async def test_an_unexpected_error_never_ends_the_writer(
    tmp_path: Path, make_writer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = await seeded(await SqliteStore.open(f"sqlite:///{tmp_path}/ledger.db"))
    breaking = _Breaking(store, "req-00007")
    told = Quarantined()
    writer: LedgerWriter = make_writer(breaking, on_quarantined=told)
    try:
        with caplog.at_level(logging.ERROR, logger="taximeter.ledger"):
            for n in range(20):
                await writer.submit(event(n))
            await asyncio.wait_for(writer.flush(), 30)
        assert writer.alive and writer.pending == 0
        await assert_exactly_once(store, [f"req-{n:05d}" for n in range(20) if n != 7])
        assert [e.request_id for e, _ in told] == ["req-00007"]
        assert "RuntimeError: an unexpected bug" in told[0][1]
        failures = [r for r in caplog.records if r.message == "ledger_write_failed"]
        assert failures and all(r.exc_info for r in failures)  # with its traceback
    finally:
        await writer.close(timeout_s=5)
        await store.close()


async def test_an_event_even_the_quarantine_refuses_is_dropped_not_retried(
    tmp_path: Path, make_writer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = await seeded(await SqliteStore.open(f"sqlite:///{tmp_path}/ledger.db"))

    async def refuse(*args: Any) -> None:
        raise DataRejected("SQLite refused a value: no")

    store.quarantine = refuse  # type: ignore[method-assign]
    told = Quarantined()
    writer: LedgerWriter = make_writer(store, on_quarantined=told)
    with caplog.at_level(logging.ERROR, logger="taximeter.ledger"):
        await writer.submit(event(1, input_tokens=2**63))
        await writer.submit(event(2))
        await asyncio.wait_for(writer.flush(), 10)
    assert writer.alive and writer.pending == 0 and told == []
    [dropped] = [r for r in caplog.records if r.message == "ledger_event_dropped"]
    assert dropped.request_id == "req-00001"  # type: ignore[attr-defined]
    await assert_exactly_once(store, ["req-00002"])
    await writer.close(timeout_s=5)
    await store.close()


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_the_proxy_counts_a_quarantined_event_in_its_metric(proxy: Harness, clock: FakeClock) -> None:
    await proxy.new_client("acme", mode="tokens", token_limit=10**6)
    ledger = proxy.services.meter.ledger
    await ledger.submit(usage_event("req-poison", clock(), input_tokens=2**63))
    await ledger.submit(usage_event("req-good", clock(), input_tokens=10))
    await ledger.flush()
    assert ledger.alive and ledger.pending == 0
    async with proxy.http.get(f"{proxy.url}/metrics") as resp:
        text = await resp.text()
    scraped = samples(text)  # unlabelled series: indexed, so a missing one fails
    assert scraped[("taximeter_ledger_quarantined_events_total", ())] == 1
    assert scraped[("taximeter_ledger_pending_events", ())] == 0
    assert [e["request_id"] for e in await proxy.events("acme")] == ["req-good"]


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_an_event_waits_for_what_it_is_written_after_but_never_for_ever(
    proxy: Harness, clock: FakeClock
) -> None:
    await proxy.new_client("acme", mode="tokens", token_limit=10**6)
    store = proxy.services.meter.ledger._store
    ledger = LedgerWriter(store, after_wait_s=0.5)  # type: ignore[arg-type]
    ledger.start()
    counted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    await ledger.submit(usage_event("req-counted", clock(), input_tokens=10), after=counted)
    await asyncio.sleep(0.2)
    assert ledger.pending == 1  # not written while the gate has yet to count it
    counted.set_result(None)
    await ledger.flush()
    await ledger.submit(usage_event("req-hung", clock(), input_tokens=10), after=never)
    async with asyncio.timeout(5):
        await ledger.flush()  # a gate that hangs delays the ledger by after_wait_s, no more
    assert sorted(e["request_id"] for e in await proxy.events("acme")) == ["req-counted", "req-hung"]
    await ledger.close()


# -- the whole process ----------------------------------------------------------------


@pytest.mark.slow
async def test_sigterm_ends_the_process_while_the_store_is_down(
    pg: PrivatePostgres, private_db: str, aiohttp_server: Any, tmp_path: Path
) -> None:
    """Spec 11: SIGTERM always ends the process. Calls answered while Postgres
    is down wait in the ledger; at SIGTERM it waits ledger_drain_s for them,
    then exits."""
    redis = PrivateRedis()
    upstream = await aiohttp_server(FakeUpstream().app())
    proxy = Deployment(
        tmp_path,
        str(upstream.make_url("/v1")),
        database_url=private_db,
        redis_url="",
        ledger_drain_s="1.5",
        key_cache_s="600",  # the key is not looked up again while the store is down
    )
    try:
        await redis.start()
        proxy.env["TAXIMETER_REDIS_URL"] = redis.url  # admission by the gate while the store is down
        key = await proxy.new_client("acme", "--mode", "tokens", "--tokens", "100000000")
        await proxy.start()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:

            async def embed() -> int:
                body = {"model": "text-embedding-3-small", "input": "x"}
                async with http.post(f"{proxy.url}/v1/embeddings", json=body) as resp:
                    return resp.status

            assert await embed() == 200  # the gate holds its copy of the budget
            await pg.stop()
            statuses = [await embed() for _ in range(5)]
        assert 200 in statuses  # answered, metered into the ledger, not yet durable
        assert proxy.server is not None
        started = time.monotonic()
        proxy.server.send_signal(signal.SIGTERM)  # only the process this test started
        assert await asyncio.wait_for(proxy.server.wait(), 20) == 0
        assert time.monotonic() - started < 1.5 + 8
    finally:
        if proxy.server is not None and proxy.server.returncode is None:
            await proxy.kill()
        await redis.close()
        await pg.start()
