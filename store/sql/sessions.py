"""Dashboard sessions in SQL, by the hash of their id."""

from __future__ import annotations

from datetime import datetime

from taximeter.store.sql.core import SqlBase

__all__ = ["SqlSessions"]


class SqlSessions(SqlBase):
    """:class:`~taximeter.store.base.DashboardSessions` in SQL."""

    async def create_session(self, id_hash: str, scope: str, now: datetime, expires_at: datetime) -> None:
        """Keep a new dashboard session (by the hash of its id); expired ones are
        purged in the same transaction, so the table stays small."""
        async with self.transaction() as conn:
            await conn.execute(
                "DELETE FROM dashboard_sessions WHERE expires_at <= ?", self.dialect.time_in(now)
            )
            await conn.execute(
                "INSERT INTO dashboard_sessions (id_hash, scope, created_at, expires_at) VALUES (?, ?, ?, ?)",
                id_hash,
                scope,
                self.dialect.time_in(now),
                self.dialect.time_in(expires_at),
            )

    async def session_valid(self, id_hash: str, scope: str, now: datetime) -> bool:
        async with self.connection() as conn:
            row = await conn.fetchone(
                "SELECT id_hash FROM dashboard_sessions WHERE id_hash = ? AND scope = ? AND expires_at > ?",
                id_hash,
                scope,
                self.dialect.time_in(now),
            )
        return row is not None

    async def end_session(self, id_hash: str) -> None:
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", id_hash)
