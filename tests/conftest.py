"""Fixtures for every folder (unit/, contract/, http/, system/; what they
share beyond fixtures is in support/): real Postgres and Redis (per test, a
fresh database copied from a template migrated once per run, and a fresh key
prefix), every store and gate backend, the proxy in front of the fake
upstream, an injectable clock.

A test that needs Postgres or Redis is skipped when the service is missing,
except under ``CI=true``, where it fails. A test that starts a process is
marked slow.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from taximeter.proxy.app import create_app
from taximeter.proxy.settings import Settings
from taximeter.store.base import Gate, Store
from tests.support.availability import unavailable
from tests.support.blocking import allow_known_blocking
from tests.support.clock import FakeClock
from tests.support.fake_upstream import UPSTREAM_KEY, FakeUpstream
from tests.support.harness import ADMIN_TOKEN, Harness
from tests.support.shared_services import (
    REDIS_URL,
    create_migrated_template,
    drop_template,
    fresh_pg_database,
    fresh_redis_prefix,
    postgres_answers,
)


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which something blocks the event loop."""
    with blockbuster_ctx() as detector:
        allow_known_blocking(detector)
        yield detector


@pytest.fixture(autouse=True)
def processes_only_when_slow(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that starts a process (a server, a private database, a browser,
    a tool) is marked slow: ``-m "not slow"`` stays a quick in-process run."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(self: subprocess.Popen[Any], args: Any, *more: Any, **options: Any) -> None:
        raise AssertionError(f"a test not marked slow starts a process: {args!r}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TAXIMETER_* setting leaks in from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("TAXIMETER_") and not name.startswith("TAXIMETER_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    """This run's migrated template database, made (outside any event loop)
    by the first test that may need it, dropped at the end of the run; None
    without Postgres, whose tests then skip, or fail under CI, on their own."""
    if not postgres_answers():
        yield None
        return
    name = create_migrated_template()
    yield name
    drop_template(name)


@pytest.fixture
async def empty_pg_url() -> AsyncIterator[str]:
    """An empty Postgres database: for tests of migrations from nothing, and
    for processes that migrate it at start-up as a deployment does."""
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    async with fresh_redis_prefix() as prefix:
        yield prefix


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A private three-node Redis Cluster shared by the run's tests that ask
    for it (each under a key prefix of its own), started on first use."""
    import asyncio
    import shutil

    from tests.support.private_services import PrivateRedisCluster

    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        unavailable(f"a Redis Cluster needs {' and '.join(missing)}", "apt-get install redis-server")
    cluster = PrivateRedisCluster()
    asyncio.run(cluster.start())
    try:
        yield cluster.url
    finally:
        asyncio.run(cluster.close())


@pytest.fixture(params=["sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: os.PathLike[str], pg_template: str | None
) -> AsyncIterator[Store]:
    """Each store backend, migrated and empty (on Postgres, a copy of the migrated template)."""
    from taximeter.store.factory import open_store

    async with AsyncExitStack() as stack:
        if request.param == "postgres":
            url = await stack.enter_async_context(fresh_pg_database(pg_template))
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
    request: pytest.FixtureRequest, tmp_path: os.PathLike[str], pg_template: str | None
) -> AsyncIterator[dict[str, str]]:
    """Settings for SQLite + in-process gate, and for Postgres + Redis."""
    if request.param == "embedded":
        yield {"database_url": f"sqlite:///{tmp_path}/taximeter.db"}
        return
    async with fresh_pg_database(pg_template) as url, fresh_redis_prefix() as prefix:
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

    async def start(
        *, routes: Sequence[tuple[dict[str, Any], FakeUpstream]] = (), **overrides: Any
    ) -> Harness:
        """``routes``: several upstreams, each a declaration (name, models,
        provider...) and the fake that answers it; the last is ``upstream``."""
        upstream_server = await aiohttp_server(upstream.app())
        defaults: dict[str, Any] = {
            "upstream_url": str(upstream_server.make_url("/v1")),
            "upstream_api_key": UPSTREAM_KEY,
            "admin_token": ADMIN_TOKEN,
        }
        for declaration, fake in routes:
            url = str((await aiohttp_server(fake.app())).make_url("/v1"))
            defaults.setdefault("upstreams", []).append(
                {"api_key": UPSTREAM_KEY, **declaration, "base_url": url}
            )
        settings = Settings(**{**defaults, **backend, **overrides})
        server = await aiohttp_server(create_app(settings, clock=clock))
        answering = routes[-1][1] if routes else upstream
        harness = Harness(server=server, upstream=answering, http=aiohttp.ClientSession())
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
