"""The Postgres ledger in one partition per UTC month: the names and bounds of
the partitions, the migration that splits an existing ledger into them, and
the statements that record a batch and trim old months.

A partitioned table cannot hold a unique index on ``request_id`` alone (a
unique index must name the partition key), so each request id is claimed in
``event_ids`` (one small row, its primary key) in the statement that inserts
the event: recording stays idempotent whatever month a replay falls in.
"""

from __future__ import annotations

from datetime import UTC, datetime

from taximeter.store.sql.rows import EVENT_COLUMNS

__all__ = [
    "INSERT_EVENTS",
    "PARTITION_EVENTS",
    "Month",
    "create_month",
    "following",
    "month_in",
    "month_of",
    "month_table",
    "months_before",
]

Month = tuple[int, int]  # (year, month), UTC
_PREFIX = "usage_events_y"

# Migration 16 on Postgres, run as one script in the migration's transaction:
# the old table's rows copied into one partition per month they fall in (and
# this month's), their ids into event_ids, then the indexes built once.
PARTITION_EVENTS = """
DROP INDEX IF EXISTS usage_events_client_time;
DROP INDEX IF EXISTS usage_events_time;
DROP INDEX IF EXISTS usage_events_client_user_time;
ALTER TABLE usage_events RENAME TO usage_events_unpartitioned;
CREATE TABLE usage_events (LIKE usage_events_unpartitioned INCLUDING DEFAULTS)
    PARTITION BY RANGE (created_at);
CREATE TABLE event_ids (request_id TEXT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL);
DO $$
DECLARE
    first timestamp;
BEGIN
    FOR first IN
        SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC') FROM usage_events_unpartitioned
        UNION SELECT date_trunc('month', now() AT TIME ZONE 'UTC')
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
            'usage_events_' || to_char(first, '"y"YYYY"m"MM'),
            first AT TIME ZONE 'UTC',
            (first + interval '1 month') AT TIME ZONE 'UTC'
        );
    END LOOP;
END $$;
INSERT INTO usage_events SELECT * FROM usage_events_unpartitioned;
INSERT INTO event_ids SELECT request_id, created_at FROM usage_events_unpartitioned;
DROP TABLE usage_events_unpartitioned;
CREATE INDEX usage_events_client_time ON usage_events (client_id, created_at);
CREATE INDEX usage_events_time ON usage_events (created_at);
CREATE INDEX usage_events_client_user_time ON usage_events (client_id, end_user, created_at);
ANALYZE usage_events;
ANALYZE event_ids;
"""

# Types of EVENT_COLUMNS, in order, for inserting a batch as one array per column.
_EVENT_TYPES = (
    ["text"] * 7
    + ["integer"]
    + ["bigint"] * 5
    + ["numeric", "integer", "numeric", "numeric", "text"]
    + ["numeric", "boolean", "boolean", "timestamptz"]
    + ["text", "text", "text", "text", "integer"]
    + ["numeric", "numeric", "text"]
)
_COLUMNS = [c.strip() for c in EVENT_COLUMNS.split(",")]
# The batch in one statement: the first event of each request id in it claims
# the id (an id claimed before is skipped), the events that claimed theirs are
# inserted, and the store-held reservations of those calls deleted.
INSERT_EVENTS = (
    f"WITH batch AS (SELECT * FROM unnest({', '.join(f'?::{t}[]' for t in _EVENT_TYPES)}) "
    f"WITH ORDINALITY AS b({', '.join(_COLUMNS)}, n)), "
    "firsts AS (SELECT DISTINCT ON (request_id) * FROM batch ORDER BY request_id, n), "
    "claimed AS (INSERT INTO event_ids (request_id, created_at) SELECT request_id, created_at FROM firsts "
    "ON CONFLICT (request_id) DO NOTHING RETURNING request_id), "
    f"inserted AS (INSERT INTO usage_events ({EVENT_COLUMNS}) SELECT {', '.join(f'f.{c}' for c in _COLUMNS)} "
    "FROM firsts f JOIN claimed USING (request_id) RETURNING request_id), "
    "dropped AS (DELETE FROM reservations WHERE request_id IN (SELECT request_id FROM inserted)) "
    "SELECT request_id FROM inserted"
)


def month_of(when: datetime) -> Month:
    utc = when.astimezone(UTC)
    return utc.year, utc.month


def month_table(month: Month) -> str:
    return f"{_PREFIX}{month[0]:04d}m{month[1]:02d}"


def following(month: Month) -> Month:
    """The month after ``month`` (December 9999 has none: itself)."""
    year, number = month
    if month == (9999, 12):
        return month
    return (year + 1, 1) if number == 12 else (year, number + 1)


def create_month(month: Month) -> list[str]:
    """The statements that make ``month``'s partition: a table of the ledger's
    shape, then attached (which, unlike ``CREATE TABLE ... PARTITION OF``,
    leaves reads and writes of the ledger running). Numbers only: nothing
    from a caller reaches the DDL as text."""
    start = f"'{month[0]:04d}-{month[1]:02d}-01 00:00:00+00'"
    after = following(month)
    end = "MAXVALUE" if after == month else f"'{after[0]:04d}-{after[1]:02d}-01 00:00:00+00'"
    table = month_table(month)
    return [
        f"CREATE TABLE IF NOT EXISTS {table} (LIKE usage_events INCLUDING DEFAULTS)",
        f"ALTER TABLE usage_events ATTACH PARTITION {table} FOR VALUES FROM ({start}) TO ({end})",
    ]


def month_in(table: str) -> Month | None:
    """The month of a partition's name (None: not a month partition's name)."""
    digits = table.removeprefix(_PREFIX)
    if not table.startswith(_PREFIX) or len(digits) != 7 or digits[4] != "m" or not digits.isascii():
        return None
    if not (digits[:4].isdigit() and digits[5:].isdigit()):
        return None
    return int(digits[:4]), int(digits[5:])


def months_before(tables: list[str], cutoff: datetime) -> list[str]:
    """The month partitions among ``tables`` that end at or before ``cutoff``."""
    first = month_of(cutoff)  # a month before it ends by the start of cutoff's month
    return sorted(t for t in tables if (month := month_in(t)) is not None and month < first)
