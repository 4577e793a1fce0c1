"""Who owns each object the upstream keeps, in SQL (spec section 4b)."""

from __future__ import annotations

from typing import Any

import orjson

from taximeter.pricing.models import OwnedObject
from taximeter.store.sql.core import Row, SqlBase

__all__ = ["SqlUpstreamObjects"]

_MAX_IDS = 500  # ids one request may name are far fewer; bound the statement anyway
_COLUMNS = "object_id, kind, client_id, upstream, created_at, detail"


class SqlUpstreamObjects(SqlBase):
    """:class:`~taximeter.store.base.UpstreamObjects` in SQL."""

    async def own_objects(self, owned: list[OwnedObject]) -> None:
        async with self.transaction() as conn:
            for one in owned:
                await conn.execute(
                    f"INSERT INTO upstream_objects ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (object_id) DO NOTHING",
                    one.object_id,
                    one.kind,
                    one.client_id,
                    one.upstream,
                    self.dialect.time_in(one.created_at),
                    None if one.detail is None else orjson.dumps(one.detail).decode(),
                )

    async def owned_objects(self, object_ids: list[str]) -> dict[str, OwnedObject]:
        wanted = sorted(set(object_ids))[:_MAX_IDS]
        if not wanted:
            return {}
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {_COLUMNS} FROM upstream_objects "
                f"WHERE object_id IN ({', '.join('?' * len(wanted))})",
                *wanted,
            )
        return {r["object_id"]: self._owned(r) for r in rows}

    async def forget_object(self, object_id: str) -> None:
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM upstream_objects WHERE object_id = ?", object_id)

    async def list_objects(
        self, client_id: str, kind: str, *, limit: int, after: str | None, newest_first: bool
    ) -> list[OwnedObject]:
        where = "client_id = ? AND kind = ?"
        args: list[Any] = [client_id, kind]
        order, beyond = ("DESC", "<") if newest_first else ("ASC", ">")
        if after is not None:
            # Rows past the cursor's (created_at, object_id), as the list is ordered.
            where += (
                f" AND (created_at, object_id) {beyond} (SELECT created_at, object_id FROM upstream_objects "
                "WHERE object_id = ? AND client_id = ?)"
            )
            args += [after, client_id]
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {_COLUMNS} FROM upstream_objects WHERE {where} "
                f"ORDER BY created_at {order}, object_id {order} LIMIT ?",
                *args,
                limit,
            )
        return [self._owned(r) for r in rows]

    def _owned(self, row: Row) -> OwnedObject:
        detail = row["detail"]
        return OwnedObject(
            row["object_id"],
            row["kind"],
            row["client_id"],
            row["upstream"],
            self.dialect.time_out(row["created_at"]),
            None if detail is None else orjson.loads(detail),
        )
