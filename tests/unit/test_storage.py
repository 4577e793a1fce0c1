"""Storage by the day (pure): what a vector store's size and days come to."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from taximeter.pricing.catalog import load_catalog
from taximeter.pricing.storage import (
    MOST_DAYS,
    STORAGE_FEE,
    STORAGE_MODEL,
    days_to_charge,
    expired_on,
    next_midnight,
    storage_usage,
)


@pytest.mark.parametrize(
    ("size", "mib"),
    [(0, 0), (1, 1), (2**20, 1), (2**20 + 1, 2), (3 * 2**29, 1536)],
)
def test_a_part_of_a_mib_is_kept_as_a_whole_one(size: int, mib: int) -> None:
    usage = storage_usage(size)
    assert usage is not None and usage.tool_calls == {STORAGE_FEE: mib}


@pytest.mark.parametrize("size", [-1, True, 1.5, "100", None, 2**60])
def test_a_size_that_is_none_is_not_believed(size: object) -> None:
    assert storage_usage(size) is None


def test_each_day_is_charged_once_from_the_day_it_was_made() -> None:
    made = date(2026, 3, 10)
    assert days_to_charge(None, made, date(2026, 3, 10)) == [made]
    assert days_to_charge(date(2026, 3, 10), made, date(2026, 3, 12)) == [
        date(2026, 3, 11),
        date(2026, 3, 12),
    ]
    assert days_to_charge(date(2026, 3, 12), made, date(2026, 3, 12)) == []
    long_after = days_to_charge(None, made, date(2028, 1, 1))
    assert len(long_after) == MOST_DAYS and long_after[-1] == date(2028, 1, 1)


def test_the_next_look_is_after_midnight_utc() -> None:
    assert next_midnight(datetime(2026, 3, 10, 23, 59, tzinfo=UTC)) == datetime(2026, 3, 11, tzinfo=UTC)
    assert next_midnight(datetime(2026, 3, 11, tzinfo=UTC)) == datetime(2026, 3, 12, tzinfo=UTC)


def test_the_shipped_catalog_prices_a_gib_day_at_ten_cents() -> None:
    # "$0.10 / GB per day" (pricing page, "File search storage", GB = 2^30 bytes), checked 2026-12-08.
    price = load_catalog(today=date(2026, 12, 8)).resolve(STORAGE_MODEL)
    usage = storage_usage(2**30)
    assert price is not None and usage is not None
    assert price.cost_usd(usage) == Decimal("0.100000000")


def test_a_store_expired_is_kept_to_the_day_it_expired() -> None:
    today = date(2026, 3, 20)
    assert expired_on({"status": "completed", "expires_at": 1773360000}, today) is None
    assert expired_on({"status": "expired", "expires_at": 1773360000}, today) == date(2026, 3, 13)
    for unusable in (None, "soon", True, -5, 10**15):
        assert expired_on({"status": "expired", "expires_at": unusable}, today) == today
