"""The store's logic, written once for both SQL backends.

A backend supplies connections (:class:`Conn`) and a :class:`Dialect` that
says how money, times and booleans are stored; every transaction here loads a
budget, applies :mod:`taximeter.pricing.budgets` and writes it back, so SQLite
and Postgres behave identically.

:class:`SqlStore` is composed of one part per thing the store holds, each in
its own module: :mod:`.directory` (clients and keys), :mod:`.budgets`,
:mod:`.ledger`, :mod:`.money_terms` (exchange rates and credits),
:mod:`.reservations` (store-held), :mod:`.outbox` (alerts), :mod:`.exports`
(billing sinks), :mod:`.objects` (who owns each upstream object) and
:mod:`.sessions`; they
share :mod:`.core` (connections, dialect, schema), :mod:`.rows` (rows to
models) and :mod:`.budget_writes` (locked budget writes).
"""

from __future__ import annotations

from taximeter.store.sql.budgets import SqlBudgets
from taximeter.store.sql.core import Conn, Dialect
from taximeter.store.sql.directory import SqlDirectory
from taximeter.store.sql.exports import SqlExports
from taximeter.store.sql.ledger import SqlLedger, sanitised
from taximeter.store.sql.money_terms import SqlMoneyTerms
from taximeter.store.sql.objects import SqlUpstreamObjects
from taximeter.store.sql.outbox import SqlOutbox
from taximeter.store.sql.reservations import SqlReservations
from taximeter.store.sql.rows import EVENT_COLUMNS
from taximeter.store.sql.sessions import SqlSessions

__all__ = ["EVENT_COLUMNS", "Conn", "Dialect", "SqlStore", "sanitised"]


class SqlStore(
    SqlDirectory,
    SqlBudgets,
    SqlMoneyTerms,
    SqlLedger,
    SqlReservations,
    SqlOutbox,
    SqlExports,
    SqlUpstreamObjects,
    SqlSessions,
):
    """:class:`~taximeter.store.base.Store` over any :class:`Dialect`."""
