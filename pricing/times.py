"""Times as the public API writes them: RFC 3339 in UTC, ``Z`` for its offset."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

__all__ = ["rfc3339", "utc_day_start", "utc_month_start"]


@overload
def rfc3339(when: datetime) -> str: ...
@overload
def rfc3339(when: None) -> None: ...
@overload
def rfc3339(when: datetime | None) -> str | None: ...
def rfc3339(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc_day_start(when: datetime) -> datetime:
    """Midnight UTC of the UTC day ``when`` falls in: where a daily total starts."""
    utc = when.astimezone(UTC)
    return datetime(utc.year, utc.month, utc.day, tzinfo=UTC)


def utc_month_start(when: datetime, months_back: int = 0) -> datetime:
    """Midnight UTC of the 1st of the UTC month ``months_back`` months before
    the one ``when`` falls in."""
    utc = when.astimezone(UTC)
    index = utc.year * 12 + utc.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
