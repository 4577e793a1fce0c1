"""Shared fixtures: real Postgres and Redis (fresh database and key prefix per
test), every store and gate backend, an injectable clock.

A test that needs Postgres or Redis is skipped when the service is missing,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from blockbuster import BlockBuster, blockbuster_ctx

from taximeter.pricing.models import UsageEvent
from taximeter.proxy.app import create_app
from taximeter.proxy.settings import Settings
from taximeter.store.base import Gate, Store
from tests.fake_upstream import UPSTREAM_KEY, FakeUpstream
from tests.harness import ADMIN_TOKEN, Harness

PG_ADMIN_URL = os.environ.get("TAXIMETER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TAXIMETER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def allow_known_blocking(detector: BlockBuster) -> None:
    """The blocking calls that are fine, each for its reason."""
    # zoneinfo reads each timezone's file once, then serves it from its cache.
    for name in ("os.stat", "io.BufferedReader.read"):
        detector.functions[name].can_block_in("zoneinfo/_tzpath.py", "find_tzfile")
        detector.functions[name].can_block_in(
            "zoneinfo/_common.py", ["load_tzdata", "load_data", "from_file"]
        )
    # asyncpg looks for ~/.pgpass and ~/.postgresql while it opens a connection.
    for function in detector.functions.values():
        function.can_block_in(
            "asyncpg/connect_utils.py",
            ["_read_password_file", "_dot_postgresql_path", "_parse_connect_dsn_and_args"],
        )


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which something blocks the event loop."""
    with blockbuster_ctx() as detector:
        allow_known_blocking(detector)
        yield detector


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TAXIMETER_* setting leaks in from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("TAXIMETER_") and not name.startswith("TAXIMETER_TEST_"):
            monkeypatch.delenv(name)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# Probed once, outside any event loop.
_UP = {("127.0.0.1", 5432): _answers("127.0.0.1", 5432), ("127.0.0.1", 6379): _answers("127.0.0.1", 6379)}


def require(service: str, host: str, port: int) -> None:
    if _UP.get((host, port)) or ((host, port) not in _UP and _answers(host, port)):
        return
    message = f"{service} is not answering on {host}:{port}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: services are required)")
    pytest.skip(message)


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 10, 15, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    def set(self, when: datetime) -> None:
        self.now = when


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


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


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    async with fresh_redis_prefix() as prefix:
        yield prefix


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    return f"sqlite:///{tmp_path}/taximeter.db"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> AsyncIterator[Store]:
    """Each store backend, migrated and empty."""
    from taximeter.store.factory import open_store

    async with AsyncExitStack() as stack:
        if request.param == "postgres":
            url = await stack.enter_async_context(fresh_pg_database())
        else:
            url = f"sqlite:///{tmp_path}/taximeter.db"
        opened = await open_store(url)
        stack.push_async_callback(opened.close)
        await opened.migrate()
        yield opened


@pytest.fixture(params=["local", "redis"])
async def gate(request: pytest.FixtureRequest) -> AsyncIterator[Gate]:
    """Each gate backend, empty."""
    from taximeter.store.local_gate import LocalGate
    from taximeter.store.redis_gate import RedisGate

    async with AsyncExitStack() as stack:
        opened: Gate
        if request.param == "redis":
            prefix = await stack.enter_async_context(fresh_redis_prefix())
            opened = RedisGate.from_url(REDIS_URL, prefix=prefix)
        else:
            opened = LocalGate(max_age_s=30 * 86400)  # refresh by age is tested on its own
        stack.push_async_callback(opened.close)
        yield opened


@pytest.fixture(params=["embedded", "production"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: os.PathLike[str]
) -> AsyncIterator[dict[str, str]]:
    """Settings for SQLite + in-process gate, and for Postgres + Redis."""
    if request.param == "embedded":
        yield {"database_url": f"sqlite:///{tmp_path}/taximeter.db"}
        return
    async with fresh_pg_database() as url, fresh_redis_prefix() as prefix:
        yield {"database_url": url, "redis_url": REDIS_URL, "redis_prefix": prefix}


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def make_proxy(
    backend: dict[str, str], aiohttp_server: Any, upstream: FakeUpstream, clock: FakeClock
) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    """Start the proxy (on port 0) in front of the fake upstream. ``backend``
    comes first so its database outlives the servers: a proxy shutting down
    still writes its last events."""
    harnesses: list[Harness] = []

    async def start(**overrides: Any) -> Harness:
        upstream_server = await aiohttp_server(upstream.app())
        defaults = {
            "upstream_url": str(upstream_server.make_url("/v1")),
            "upstream_api_key": UPSTREAM_KEY,
            "admin_token": ADMIN_TOKEN,
        }
        settings = Settings(**{**defaults, **backend, **overrides})
        server = await aiohttp_server(create_app(settings, clock=clock))
        harness = Harness(server=server, upstream=upstream, http=aiohttp.ClientSession())
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        await harness.close()


@pytest.fixture
async def proxy(make_proxy: Callable[..., Awaitable[Harness]]) -> AsyncIterator[Harness]:
    harness = await make_proxy()
    yield harness
    await harness.assert_ledger_matches_counters()


def usage_event(request_id: str, when: datetime, **fields: Any) -> UsageEvent:
    """A chat event of client acme in BRL at 5.0, with ``fields`` replaced."""
    values: dict[str, Any] = {
        "request_id": request_id,
        "client_id": "acme",
        "api_type": "chat",
        "model": "gpt-4o",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "created_at": when,
        "currency": "BRL",
        "exchange_rate": Decimal(5),
    }
    values.update(fields)
    return UsageEvent(**values)
