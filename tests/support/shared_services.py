"""The machine's shared Postgres and Redis: a fresh database and a fresh key
prefix per test, dropped and deleted afterwards.

A migrated test database is a copy of a template migrated once per run
(``CREATE DATABASE … TEMPLATE``), which is quicker than migrating each one;
a test of migrations, or of processes that migrate as a deployment does,
asks for an empty database instead. The template's name carries the pid, so
runs side by side on one server never share one.

A test that needs one of them is skipped when the service is missing, except
under ``CI=true``, where it fails.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from tests.support.availability import unavailable

PG_ADMIN_URL = os.environ.get("TAXIMETER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TAXIMETER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# Probed once, outside any event loop.
_UP = {("127.0.0.1", 5432): _answers("127.0.0.1", 5432), ("127.0.0.1", 6379): _answers("127.0.0.1", 6379)}


def postgres_answers() -> bool:
    return _UP[("127.0.0.1", 5432)]


def require(service: str, host: str, port: int) -> None:
    """Skip the test if ``service`` is not answering; under ``CI=true``, fail it."""
    if _UP.get((host, port)) or ((host, port) not in _UP and _answers(host, port)):
        return
    unavailable(f"{service} is not answering on {host}:{port}")


def _database_url(name: str) -> str:
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@asynccontextmanager
async def fresh_pg_database(template: str | None = None) -> AsyncIterator[str]:
    """A fresh Postgres database, dropped afterwards: empty, or a copy of
    ``template`` (which no one may be connected to)."""
    require("Postgres", "127.0.0.1", 5432)
    name = f"taximeter_test_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield _database_url(name)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _in_a_thread(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` to its end on an event loop of its own, in a thread
    (from sync code, whatever loop the test runner has)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()


def create_migrated_template() -> str:
    """Create and migrate this run's template database; its name. Every
    connection to it is closed when this returns."""
    from taximeter.store.postgres import PostgresStore

    name = f"taximeter_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        await _admin(f'CREATE DATABASE "{name}"')
        store = await PostgresStore.open(_database_url(name), min_size=1, max_size=1)
        try:
            await store.migrate()
        finally:
            await store.close()  # Postgres copies no database that has a session open

    _in_a_thread(create())
    return name


def drop_template(name: str) -> None:
    _in_a_thread(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@asynccontextmanager
async def fresh_redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    require("Redis", "127.0.0.1", 6379)
    prefix = f"taximeter-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
