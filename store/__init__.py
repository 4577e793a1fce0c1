"""Ledger and budgets: the store (SQLite, Postgres), the budget gate (in-process,
Redis), schema migrations and the ledger writer.

Importing this package loads no database driver; each backend module does.
"""
