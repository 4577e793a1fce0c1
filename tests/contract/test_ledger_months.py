"""The ledger kept by month, on every backend: a request id is recorded once
whatever month its replay falls in; the retention setting drops old events
and keeps their daily totals. On Postgres, one partition per UTC month, and a
ledger written before partitions is split into them by its migration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from taximeter.pricing.money import quantize
from taximeter.pricing.times import utc_month_start
from taximeter.proxy.gateway.retention import trim
from taximeter.store.base import Store
from taximeter.store.factory import open_store
from taximeter.store.ledger_months import create_month, months_before
from taximeter.store.migrations import MIGRATIONS, PARTITIONED
from taximeter.store.sql import core
from taximeter.store.sql.rows import EVENT_COLUMNS, event_row
from tests.support.factories import T0, add_client, budget_config, usage_event

JAN, FEB, MAR = (datetime(2026, m, d, 12, tzinfo=UTC) for m, d in ((1, 15), (2, 15), (3, 10)))


def event(request_id: str, at: datetime, cost: str = "0.02") -> object:
    return usage_event(
        request_id,
        at,
        input_tokens=60,
        output_tokens=40,
        cost=Decimal(cost),
        cost_usd=quantize(Decimal(cost) / 5),
    )


async def test_a_request_id_is_recorded_once_whatever_month_its_replay_falls_in(store: Store) -> None:
    await add_client(store)
    assert (await store.record(event("r1", MAR))).recorded  # type: ignore[arg-type]
    assert not (await store.record(event("r1", MAR + timedelta(days=40)))).recorded  # type: ignore[arg-type]
    batch = [event("r2", MAR), event("r2", MAR + timedelta(days=40)), event("r3", MAR + timedelta(days=40))]
    assert [r.recorded for r in await store.record_many(batch)] == [True, False, True]  # type: ignore[arg-type]
    held = {e.request_id: e.created_at for e in await store.list_events("acme", 10)}
    assert held == {"r1": MAR, "r2": MAR, "r3": MAR + timedelta(days=40)}
    budget_free = await store.ledger_totals("acme", JAN)
    assert budget_free == (300, 60_000_000)  # three events of 100 tokens and 0.02


async def test_retention_drops_old_months_and_keeps_their_daily_totals(store: Store) -> None:
    await add_client(store)
    store.export_to(["books"])  # type: ignore[attr-defined]  # every event owed to a billing sink
    for i, at in enumerate((JAN, FEB, MAR)):
        await store.record(event(f"m{i}", at))  # type: ignore[arg-type]
    window = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    before = await store.usage_report("acme", *window, "day")
    assert [r.requests for r in before] == [1, 1, 1]

    await store.put_budget(budget_config(period="none"), T0)  # a lifetime budget counts every event
    assert not await trim(store, 1, lambda: datetime(2026, 4, 5, tzinfo=UTC))
    assert len(await store.list_events("acme", 10)) == 3  # kept
    assert await store.delete_budget("acme")
    assert await trim(store, 1, lambda: datetime(2026, 4, 5, tzinfo=UTC))  # keep March and April
    assert [e.request_id for e in await store.list_events("acme", 10)] == ["m2"]
    assert await store.usage_report("acme", *window, "day") == before  # whole days: the totals
    # A window ending inside a trimmed day reads what the ledger holds of it (nothing),
    # not the whole day's totals.
    assert await store.usage_report("acme", window[0], JAN.replace(hour=6), "day") == []
    owed, _ = await store.claim_exports("books", window[1], 10, timedelta(minutes=1))
    assert [e.request_id for e in owed] == ["m2"]  # what was owed of the dropped events is gone
    await store.rebuild_daily_totals()  # sums again only the days the ledger still holds
    assert await store.usage_report("acme", *window, "day") == before
    await trim(store, 1, lambda: datetime(2026, 4, 6, tzinfo=UTC))  # again: nothing more to drop
    assert [e.request_id for e in await store.list_events("acme", 10)] == ["m2"]


def test_the_first_kept_month_is_counted_back_from_the_current_one() -> None:
    assert utc_month_start(datetime(2026, 3, 10, 15, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)
    assert utc_month_start(datetime(2026, 3, 10, tzinfo=UTC), 3) == datetime(2025, 12, 1, tzinfo=UTC)
    assert utc_month_start(datetime(2026, 1, 31, 23, tzinfo=UTC), 12) == datetime(2025, 1, 1, tzinfo=UTC)
    # 21:00 on the last day in São Paulo is already the next month in UTC.
    late = datetime(2026, 3, 31, 21, 30, tzinfo=UTC) + timedelta(hours=3)
    assert utc_month_start(late, 1) == datetime(2026, 3, 1, tzinfo=UTC)


def test_month_partitions_are_named_and_bounded_by_numbers_only() -> None:
    assert create_month((2026, 12)) == [
        "CREATE TABLE IF NOT EXISTS usage_events_y2026m12 (LIKE usage_events INCLUDING DEFAULTS)",
        "ALTER TABLE usage_events ATTACH PARTITION usage_events_y2026m12 "
        "FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')",
    ]
    assert create_month((9999, 12))[1].endswith("TO (MAXVALUE)")
    tables = [
        "usage_events_y2025m12",
        "usage_events_y2026m01",
        "usage_events_y2026m02",
        "usage_events_x",
        "other",
    ]
    assert months_before(tables, datetime(2026, 2, 1, tzinfo=UTC)) == tables[:2]
    assert months_before(tables, datetime(2026, 2, 20, tzinfo=UTC)) == tables[:2]  # February not over
    assert months_before(tables, datetime(2025, 12, 1, tzinfo=UTC)) == []


async def test_a_month_dropped_by_another_process_is_made_again_for_a_late_event(empty_pg_url: str) -> None:
    """A process that took a month's partition as made, after another
    process's retention dropped it, makes it again: the event is recorded,
    not set aside."""
    first, second = await open_store(empty_pg_url), await open_store(empty_pg_url)
    try:
        await first.migrate()
        await add_client(first)
        assert (await second.record(event("early", JAN))).recorded  # type: ignore[arg-type]
        await first.drop_events_before(datetime(2026, 3, 1, tzinfo=UTC))
        assert "usage_events_y2026m01" not in await _partitions(first)
        late = await second.record_many([event("late", JAN + timedelta(days=1))])  # type: ignore[list-item]
        assert late[0].recorded
        assert [e.request_id for e in await second.list_events("acme", 10)] == ["late"]
        async with second.connection() as conn:  # type: ignore[attr-defined]
            assert await conn.fetchone("SELECT 1 FROM quarantined_events") is None
    finally:
        await first.close()
        await second.close()


async def _partitions(store: Store) -> list[str]:
    async with store.connection() as conn:  # type: ignore[attr-defined]
        rows = await conn.fetchall(
            "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1"
        )
    return [r["name"] for r in rows]


async def test_postgres_splits_a_ledger_from_before_partitions_into_months(
    empty_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "MIGRATIONS", [m for m in MIGRATIONS if m[0] < PARTITIONED])
    store = await open_store(empty_pg_url)
    try:
        await store.migrate()
        await add_client(store)
        marks = ", ".join(["?"] * len(EVENT_COLUMNS.split(",")))
        async with store.transaction() as conn:  # type: ignore[attr-defined]  # as an older release wrote them
            for i, at in enumerate((JAN, FEB, MAR)):
                row = event_row(store.dialect, event(f"m{i}", at))  # type: ignore[attr-defined, arg-type]
                await conn.execute(f"INSERT INTO usage_events ({EVENT_COLUMNS}) VALUES ({marks})", *row)
        monkeypatch.undo()
        await store.migrate()

        this_month = utc_month_start(datetime.now(UTC))
        expected = {"usage_events_y2026m01", "usage_events_y2026m02", "usage_events_y2026m03"}
        expected.add(f"usage_events_y{this_month.year:04d}m{this_month.month:02d}")
        assert set(await _partitions(store)) == expected
        assert sorted(e.request_id for e in await store.list_events("acme", 10)) == ["m0", "m1", "m2"]
        assert not (await store.record(event("m0", MAR))).recorded  # type: ignore[arg-type]  # its id was claimed
        assert (await store.record(event("m3", T0 + timedelta(days=60)))).recorded  # type: ignore[arg-type]
        assert "usage_events_y2026m05" in await _partitions(store)  # made for the event that needed it
        await store.drop_events_before(datetime(2026, 2, 1, tzinfo=UTC))
        assert "usage_events_y2026m01" not in await _partitions(store)
        async with store.connection() as conn:  # type: ignore[attr-defined]
            ids = await conn.fetchall("SELECT request_id FROM event_ids ORDER BY 1")
        assert [r["request_id"] for r in ids] == ["m1", "m2", "m3"]
    finally:
        await store.close()
