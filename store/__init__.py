"""Ledger and budgets, the I/O side: the store (SQLite, Postgres), the budget
gate (in-process, Redis, store-held), schema migrations and the ledger writer.
The budget math and the types they share live in :mod:`taximeter.pricing`.

Importing this package loads no database driver; each backend module does.
"""
