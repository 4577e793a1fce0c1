"""The machine's shared Postgres and Redis: a fresh database and a fresh key
prefix per test, dropped and deleted afterwards.

A test that needs one of them is skipped when the service is missing, except
under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


def require(service: str, host: str, port: int) -> None:
    """Skip the test if ``service`` is not answering; under ``CI=true``, fail it."""
    if _UP.get((host, port)) or ((host, port) not in _UP and _answers(host, port)):
        return
    unavailable(f"{service} is not answering on {host}:{port}")


@asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A fresh, empty Postgres database, dropped afterwards."""
    require("Postgres", "127.0.0.1", 5432)
    name = f"taximeter_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


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
