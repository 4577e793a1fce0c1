"""Who owns each object the upstream keeps, in SQL (spec section 4b)."""

from __future__ import annotations

from taximeter.pricing.models import OwnedObject
from taximeter.store.sql.core import SqlBase

__all__ = ["SqlUpstreamObjects"]

_MAX_IDS = 500  # ids one request may name are far fewer; bound the statement anyway


class SqlUpstreamObjects(SqlBase):
    """:class:`~taximeter.store.base.UpstreamObjects` in SQL."""

    async def own_object(self, owned: OwnedObject) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "INSERT INTO upstream_objects (object_id, kind, client_id, upstream, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (object_id) DO NOTHING",
                owned.object_id,
                owned.kind,
                owned.client_id,
                owned.upstream,
                self.dialect.time_in(owned.created_at),
            )

    async def owned_objects(self, object_ids: list[str]) -> dict[str, OwnedObject]:
        wanted = sorted(set(object_ids))[:_MAX_IDS]
        if not wanted:
            return {}
        async with self.connection() as conn:
            rows = await conn.fetchall(
                "SELECT object_id, kind, client_id, upstream, created_at FROM upstream_objects "
                f"WHERE object_id IN ({', '.join('?' * len(wanted))})",
                *wanted,
            )
        return {
            r["object_id"]: OwnedObject(
                r["object_id"],
                r["kind"],
                r["client_id"],
                r["upstream"],
                self.dialect.time_out(r["created_at"]),
            )
            for r in rows
        }

    async def forget_object(self, object_id: str) -> None:
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM upstream_objects WHERE object_id = ?", object_id)
