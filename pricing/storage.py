"""What keeping data upstream costs (pure): vector stores, by the day.

A vector store is charged once for each UTC day it exists, at the size the
upstream reports for it (``usage_bytes``), in whole MiB rounded up, as the
catalog's ``vector-store`` entry prices a MiB-day (its ``storage_mib_day``
fee). A day is charged once it has ended, or when the store is deleted.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from taximeter.pricing.usage import Usage

__all__ = [
    "MOST_DAYS",
    "STORAGE_FEE",
    "STORAGE_MODEL",
    "days_to_charge",
    "expired_on",
    "next_midnight",
    "storage_request_id",
    "storage_usage",
]

STORAGE_MODEL = "vector-store"  # the catalog entry that prices it
STORAGE_FEE = "storage_mib_day"  # its unit: one MiB kept for one day
MOST_DAYS = 400  # days charged at one look at most (a watcher down for longer charges the latest)
_MIB = 1 << 20
_MOST_BYTES = 1 << 50  # a size beyond any real store (a PiB) is not believed
_MOST_SECONDS = 253402300799  # 9999-12-31T23:59:59Z: a later time is not one


def storage_usage(usage_bytes: object) -> Usage | None:
    """One day of a store of ``usage_bytes`` (as the upstream said it: not
    trusted); None when that is not a size."""
    if isinstance(usage_bytes, bool) or not isinstance(usage_bytes, int):
        return None
    if not 0 <= usage_bytes <= _MOST_BYTES:
        return None
    mib = -(-usage_bytes // _MIB)  # a part of a MiB is kept all the same
    return Usage(tool_calls={STORAGE_FEE: mib})


def days_to_charge(last_charged: date | None, created: date, through: date) -> list[date]:
    """The days after ``last_charged`` (none yet: from the day it was
    ``created``) up to ``through``, the latest :data:`MOST_DAYS` of them."""
    first = created if last_charged is None else max(created, last_charged + timedelta(days=1))
    first = max(first, through - timedelta(days=MOST_DAYS - 1))
    return [first + timedelta(days=n) for n in range((through - first).days + 1)]


def expired_on(shown: dict[str, object], today: date) -> date | None:
    """The UTC day a store the upstream shows as ``expired`` expired (its
    ``expires_at``; ``today`` when that is not a time): None while it lives."""
    if shown.get("status") != "expired":
        return None
    at = shown.get("expires_at")
    if isinstance(at, bool) or not isinstance(at, int) or not 0 < at < _MOST_SECONDS:
        return today
    return datetime.fromtimestamp(at, UTC).date()


def next_midnight(now: datetime) -> datetime:
    """When the UTC day of ``now`` ends."""
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), UTC)


def storage_request_id(object_id: str, day: date) -> str:
    """The ledger's id of one day of one store: charged once, whoever charges it."""
    return f"{object_id}/storage/{day.isoformat()}"
