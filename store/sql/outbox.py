"""The alert outbox in SQL: budget events leased to the webhook sender and
marked delivered or due again."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from taximeter.pricing.models import OutboxItem
from taximeter.store.sql.core import SqlBase
from taximeter.store.sql.rows import OUTBOX_COLUMNS

__all__ = ["SqlOutbox"]


class SqlOutbox(SqlBase):
    """:class:`~taximeter.store.base.Outbox` in SQL."""

    async def claim_alerts(self, now: datetime, limit: int, lease: timedelta) -> list[OutboxItem]:
        """Up to ``limit`` undelivered events that are due, each leased to the
        caller for ``lease`` (another process does not take it meanwhile)."""
        async with self.transaction() as conn:
            rows = await conn.fetchall(
                f"SELECT {OUTBOX_COLUMNS} FROM alert_outbox WHERE delivered_at IS NULL "
                f"AND next_attempt_at <= ? ORDER BY created_at, id LIMIT ?{self.dialect.skip_locked}",
                self.dialect.time_in(now),
                limit,
            )
            for row in rows:
                await conn.execute(
                    "UPDATE alert_outbox SET next_attempt_at = ? WHERE id = ?",
                    self.dialect.time_in(now + lease),
                    row["id"],
                )
        return [
            OutboxItem(
                id=r["id"],
                client_id=r["client_id"],
                kind=r["kind"],
                payload=r["payload"],
                attempts=int(r["attempts"]),
                pending_urls=None if r["pending_urls"] is None else tuple(json.loads(r["pending_urls"])),
            )
            for r in rows
        ]

    async def enqueue_alert_once(
        self, alert_id: str, client_id: str, kind: str, payload: str, now: datetime
    ) -> bool:
        """Put an event in the outbox unless one with ``alert_id`` is there
        already; whether it was put (so it fires once across processes)."""
        async with self.transaction() as conn:
            touched = await conn.execute(
                "INSERT INTO alert_outbox (id, client_id, kind, payload, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                alert_id,
                client_id,
                kind,
                payload,
                self.dialect.time_in(now),
                self.dialect.time_in(now),
            )
        return bool(touched)

    async def finish_alert(
        self, item: OutboxItem, failed_urls: list[str], now: datetime, retry_at: datetime, error: str | None
    ) -> None:
        """Mark ``item`` delivered (no failed URL), or schedule a retry of the failed ones."""
        async with self.transaction() as conn:
            if not failed_urls:
                await conn.execute(
                    "UPDATE alert_outbox SET delivered_at = ?, pending_urls = '[]', attempts = ? "
                    "WHERE id = ?",
                    self.dialect.time_in(now),
                    item.attempts + 1,
                    item.id,
                )
            else:
                await conn.execute(
                    "UPDATE alert_outbox SET pending_urls = ?, attempts = ?, next_attempt_at = ?, "
                    "last_error = ? WHERE id = ?",
                    json.dumps(failed_urls),
                    item.attempts + 1,
                    self.dialect.time_in(retry_at),
                    error,
                    item.id,
                )

    async def list_alerts(self, client_id: str) -> list[tuple[OutboxItem, bool]]:
        """Every event of a client, oldest first, with whether it was delivered."""
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {OUTBOX_COLUMNS}, delivered_at FROM alert_outbox WHERE client_id = ? "
                "ORDER BY created_at, id",
                client_id,
            )
        return [
            (
                OutboxItem(r["id"], r["client_id"], r["kind"], r["payload"], int(r["attempts"]), None),
                r["delivered_at"] is not None,
            )
            for r in rows
        ]
