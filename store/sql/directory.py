"""Clients and their keys, in SQL."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

from taximeter.pricing.limits import limits_json
from taximeter.pricing.models import ApiKey, Client, Limit, Terms
from taximeter.store.base import Conflict, NotFound
from taximeter.store.sql.core import SqlBase
from taximeter.store.sql.rows import CLIENT_COLUMNS, KEY_COLUMNS, client_from_row, key_from_row, terms_row

__all__ = ["SqlDirectory"]


class SqlDirectory(SqlBase):
    """:class:`~taximeter.store.base.Directory` in SQL."""

    async def create_client(self, client_id: str, name: str, now: datetime) -> Client:
        async with self.transaction() as conn:
            touched = await conn.execute(
                "INSERT INTO clients (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
                client_id,
                name,
                self.dialect.time_in(now),
            )
        if not touched:
            raise Conflict(f"client {client_id!r} already exists")
        return Client(client_id, name, now)

    async def rename_client(self, client_id: str, name: str) -> None:
        async with self.transaction() as conn:
            if not await conn.execute("UPDATE clients SET name = ? WHERE id = ?", name, client_id):
                raise NotFound(f"no client {client_id!r}")

    async def set_terms(
        self, client_id: str, terms: Terms, currency: str, *, name: str | None = None
    ) -> None:
        """Replace a client's terms; its budget, if any, moves to ``currency``
        (what it pays in), unless it has spent or been credited in another this
        period (Conflict: money in two currencies would be summed)."""
        async with self.transaction() as conn:
            changed = await conn.execute(
                "UPDATE clients SET currency = ?, markup = ?, models_allowed = ? WHERE id = ?",
                *terms_row(self.dialect, terms),
                client_id,
            )
            if not changed:
                raise NotFound(f"no client {client_id!r}")
            if name is not None:
                await conn.execute("UPDATE clients SET name = ? WHERE id = ?", name, client_id)
            budget = await conn.fetchone(
                "SELECT currency, cost_used, credit FROM budgets WHERE client_id = ?"
                + self.dialect.for_update,
                client_id,
            )
            if budget is None or budget["currency"] == currency:
                return
            zero = self.dialect.money_in(Decimal(0))
            if budget["cost_used"] != zero or budget["credit"] != zero:
                raise Conflict(
                    f"the budget of {client_id!r} has spend or credits in {budget['currency']} this period; "
                    "change it when a new period starts (credits last the period), or delete the budget first"
                )
            await conn.execute(
                "UPDATE budgets SET currency = ?, version = version + 1 WHERE client_id = ?",
                currency,
                client_id,
            )

    async def set_limits(self, client_id: str, limits: tuple[Limit, ...]) -> None:
        async with self.transaction() as conn:
            declared = json.dumps(limits_json(limits)) if limits else None
            if not await conn.execute("UPDATE clients SET limits = ? WHERE id = ?", declared, client_id):
                raise NotFound(f"no client {client_id!r}")

    async def get_client(self, client_id: str) -> Client | None:
        async with self.connection() as conn:
            row = await conn.fetchone(f"SELECT {CLIENT_COLUMNS} FROM clients WHERE id = ?", client_id)
        return None if row is None else client_from_row(self.dialect, row)

    async def list_clients(self) -> list[Client]:
        async with self.connection() as conn:
            rows = await conn.fetchall(f"SELECT {CLIENT_COLUMNS} FROM clients ORDER BY id")
        return [client_from_row(self.dialect, r) for r in rows]

    async def create_key(self, key: ApiKey) -> ApiKey:
        async with self.transaction() as conn:
            if await conn.fetchone("SELECT id FROM clients WHERE id = ?", key.client_id) is None:
                raise NotFound(f"no client {key.client_id!r}")
            touched = await conn.execute(
                "INSERT INTO api_keys (prefix, client_id, key_hash, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                key.prefix,
                key.client_id,
                key.key_hash,
                self.dialect.time_in(key.created_at),
            )
        if not touched:
            raise Conflict("key prefix already in use")
        return key

    async def find_key(self, prefix: str) -> ApiKey | None:
        """The key with its client's terms: one read authenticates and prices a call."""
        async with self.connection() as conn:
            row = await conn.fetchone(
                "SELECT k.prefix, k.client_id, k.key_hash, k.created_at, k.revoked_at, "
                "c.currency, c.markup, c.models_allowed, c.limits, b.timezone "
                "FROM api_keys k JOIN clients c ON c.id = k.client_id "
                "LEFT JOIN budgets b ON b.client_id = k.client_id WHERE k.prefix = ?",
                prefix,
            )
        return None if row is None else key_from_row(self.dialect, row, with_terms=True)

    async def list_keys(self, client_id: str) -> list[ApiKey]:
        async with self.connection() as conn:
            rows = await conn.fetchall(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE client_id = ? ORDER BY created_at, prefix",
                client_id,
            )
        return [key_from_row(self.dialect, r) for r in rows]

    async def revoke_key(self, prefix: str, now: datetime) -> ApiKey | None:
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL",
                self.dialect.time_in(now),
                prefix,
            )
            row = await conn.fetchone(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE prefix = ?",
                prefix,
            )
        return None if row is None else key_from_row(self.dialect, row)

    async def portal_secret(self, client_id: str) -> str | None:
        async with self.connection() as conn:
            row = await conn.fetchone("SELECT secret FROM portal_secrets WHERE client_id = ?", client_id)
        return None if row is None else str(row["secret"])

    async def set_portal_secret(self, client_id: str, secret: str, now: datetime, *, replace: bool) -> str:
        on_conflict = "DO NOTHING"
        if replace:
            on_conflict = "DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at"
        async with self.transaction() as conn:
            if await conn.fetchone("SELECT id FROM clients WHERE id = ?", client_id) is None:
                raise NotFound(f"no client {client_id!r}")
            await conn.execute(
                "INSERT INTO portal_secrets (client_id, secret, created_at) VALUES (?, ?, ?) "
                f"ON CONFLICT (client_id) {on_conflict}",
                client_id,
                secret,
                self.dialect.time_in(now),
            )
            row = await conn.fetchone("SELECT secret FROM portal_secrets WHERE client_id = ?", client_id)
        assert row is not None  # written above, in this transaction
        return str(row["secret"])
