"""Who owns each object the upstream keeps, and the ones watched until they
end, in SQL (spec section 4b)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson

from taximeter.pricing.models import OwnedObject, Reservation, Watch
from taximeter.store.sql.core import Row, SqlBase

__all__ = ["SqlUpstreamObjects"]

_MAX_IDS = 500  # ids one request may name are far fewer; bound the statement anyway
_COLUMNS = "object_id, kind, client_id, upstream, created_at, detail"
_WATCH_COLUMNS = "object_id, kind, client_id, upstream, reservation, checks, created_at"


class SqlUpstreamObjects(SqlBase):
    """:class:`~taximeter.store.base.UpstreamObjects` and
    :class:`~taximeter.store.base.Watches` in SQL."""

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

    async def show_object(self, object_id: str, shown: dict[str, Any]) -> None:
        async with self.transaction() as conn:
            row = await conn.fetchone(
                "SELECT detail FROM upstream_objects WHERE object_id = ?" + self.dialect.for_update, object_id
            )
            if row is None:
                return
            detail = {} if row["detail"] is None else orjson.loads(row["detail"])
            detail["object"] = shown
            await conn.execute(
                "UPDATE upstream_objects SET detail = ? WHERE object_id = ?",
                orjson.dumps(detail).decode(),
                object_id,
            )

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

    async def watch(self, watch: Watch, next_check_at: datetime) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                f"INSERT INTO watches ({_WATCH_COLUMNS}, next_check_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (object_id) DO NOTHING",
                watch.object_id,
                watch.kind,
                watch.client_id,
                watch.upstream,
                watch.reservation.to_json(),
                watch.checks,
                self.dialect.time_in(watch.created_at),
                self.dialect.time_in(next_check_at),
            )

    async def claim_watches(
        self, now: datetime, limit: int, lease: timedelta, *, object_id: str | None = None
    ) -> list[Watch]:
        at = self.dialect.time_in(now)
        which, args = (
            ("object_id = ?", [object_id]) if object_id is not None else ("next_check_at <= ?", [at])
        )
        async with self.transaction() as conn:
            rows = await conn.fetchall(
                f"SELECT {_WATCH_COLUMNS} FROM watches WHERE {which} "
                "AND (lease_until IS NULL OR lease_until <= ?) "
                f"ORDER BY next_check_at LIMIT ?{self.dialect.skip_locked}",
                *args,
                at,
                limit,
            )
            for row in rows:
                await conn.execute(
                    "UPDATE watches SET lease_until = ? WHERE object_id = ?",
                    self.dialect.time_in(now + lease),
                    row["object_id"],
                )
        return [self._watch(r) for r in rows]

    async def all_watches(self) -> list[Watch]:
        async with self.connection() as conn:
            rows = await conn.fetchall(f"SELECT {_WATCH_COLUMNS} FROM watches ORDER BY created_at")
        return [self._watch(r) for r in rows]

    async def watch_of(self, object_id: str) -> Watch | None:
        async with self.connection() as conn:
            row = await conn.fetchone(f"SELECT {_WATCH_COLUMNS} FROM watches WHERE object_id = ?", object_id)
        return None if row is None else self._watch(row)

    def _watch(self, row: Row) -> Watch:
        return Watch(
            object_id=row["object_id"],
            kind=row["kind"],
            client_id=row["client_id"],
            upstream=row["upstream"],
            reservation=Reservation.from_json(row["reservation"]),
            created_at=self.dialect.time_out(row["created_at"]),
            checks=int(row["checks"]),
        )

    async def check_again(self, object_id: str, next_check_at: datetime, checks: int) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE watches SET next_check_at = ?, checks = ?, lease_until = NULL WHERE object_id = ?",
                self.dialect.time_in(next_check_at),
                checks,
                object_id,
            )

    async def renew_watch(self, object_id: str, lease_until: datetime) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE watches SET lease_until = ? WHERE object_id = ?",
                self.dialect.time_in(lease_until),
                object_id,
            )

    async def end_watch(self, object_id: str) -> None:
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM watches WHERE object_id = ?", object_id)

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
