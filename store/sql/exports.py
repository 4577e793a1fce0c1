"""The export outbox in SQL: what each billing sink is owed, leased to the
sender in batches and deleted once the sink has it."""

from __future__ import annotations

from datetime import datetime, timedelta

from taximeter.pricing.models import UsageEvent
from taximeter.store.sql.core import SqlBase
from taximeter.store.sql.rows import EVENT_COLUMNS, event_from_row

__all__ = ["SqlExports"]


class SqlExports(SqlBase):
    """:class:`~taximeter.store.base.Exports` in SQL."""

    async def claim_exports(
        self, sink: str, now: datetime, limit: int, lease: timedelta
    ) -> tuple[list[UsageEvent], int]:
        """Up to ``limit`` events ``sink`` is owed that are due, oldest first,
        each leased to the caller for ``lease``; and the most attempts any of
        them has had (for the backoff)."""
        async with self.transaction() as conn:
            rows = await conn.fetchall(
                "SELECT request_id, attempts FROM export_outbox WHERE sink = ? AND next_attempt_at <= ? "
                f"ORDER BY next_attempt_at, request_id LIMIT ?{self.dialect.skip_locked}",
                sink,
                self.dialect.time_in(now),
                limit,
            )
            if not rows:
                return [], 0
            ids = [row["request_id"] for row in rows]
            marks = ", ".join(["?"] * len(ids))
            await conn.execute(
                f"UPDATE export_outbox SET next_attempt_at = ? WHERE sink = ? AND request_id IN ({marks})",
                self.dialect.time_in(now + lease),
                sink,
                *ids,
            )
            source, id_column = self.dialect.events_by_id
            columns = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
            events = await conn.fetchall(
                f"SELECT {columns} FROM {source} WHERE {id_column} IN ({marks}) "
                "ORDER BY e.created_at, e.request_id",
                *ids,
            )
        return [event_from_row(self.dialect, r) for r in events], max(int(r["attempts"]) for r in rows)

    async def finish_exports(
        self,
        sink: str,
        request_ids: list[str],
        *,
        delivered: bool,
        retry_at: datetime,
        error: str | None = None,
    ) -> None:
        """Forget what ``sink`` now has, or make it due again at ``retry_at``."""
        if not request_ids:
            return
        marks = ", ".join(["?"] * len(request_ids))
        async with self.transaction() as conn:
            if delivered:
                await conn.execute(
                    f"DELETE FROM export_outbox WHERE sink = ? AND request_id IN ({marks})",
                    sink,
                    *request_ids,
                )
                return
            await conn.execute(
                "UPDATE export_outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                f"WHERE sink = ? AND request_id IN ({marks})",
                self.dialect.time_in(retry_at),
                error,
                sink,
                *request_ids,
            )

    async def exports_owed(self, sink: str) -> int:
        """How many events ``sink`` has not acknowledged yet."""
        async with self.connection() as conn:
            row = await conn.fetchone("SELECT COUNT(*) AS n FROM export_outbox WHERE sink = ?", sink)
        return 0 if row is None else int(row["n"])
