"""Ledger and budgets, the I/O side. The budget math and the types the store
shares live in :mod:`taximeter.pricing`; this package only keeps and moves them.

- :mod:`.base`: the Protocols. The store is split by what it holds
  (``Directory``, ``Budgets``, ``Ledger``, ``LedgerReads``, ``HeldReservations``,
  ``Outbox``, ``DashboardSessions``; ``Store`` is all of them plus its
  lifecycle), then ``Gate``, and the errors every backend raises.
- :mod:`.sql`: the store written once for both SQL backends, a part per Protocol;
  :mod:`.sqlite` and :mod:`.postgres` supply its connections and dialect.
- :mod:`.migrations`: the schema, as numbered migrations.
- :mod:`.local_gate`, :mod:`.redis_gate` (its Lua scripts in ``lua/``) and
  :mod:`.store_gate`: the budget gates (in-process, Redis, store-held).
- :mod:`.ledger`: the ledger writer, recording events off the response path.
- :mod:`.factory`: opens the configured store and gate by URL.

Importing this package loads no database driver; each backend module does.
"""
