"""Many tenants: ``python -m bench.tenants [--clients 100,1000,10000]``.

For each number of clients N: a fresh Postgres database and a private Redis
server on a free port, N clients each with a key, a monthly budget (tokens and
cost) and two limits (a daily cost cap per end user and requests per minute),
and one ``taximeter serve`` on them that sweeps every second. Measured:

- the background work of one idle sweep tick: Postgres transactions and rows
  read (``pg_stat_database`` of the run's database), Redis commands (the
  private server's own count) and the proxy's CPU, averaged over ``--idle``
  seconds. It should not grow with N;
- the dashboard overview (the first page of cards, every client ordered): p50;
- admission under load (``wrk``, concurrency 16): p50 and p99 of calls by one
  client, then by a random client per call (every key used once before, so
  each client's budget and key are loaded as in a running proxy);
- the ledger: exactly one event per call the upstream served.

Only processes it started are stopped (by pid); its databases are dropped at
the end. Prints a Markdown report (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from bench.run import (
    CHAT,
    HERE,
    PG_ADMIN,
    PYTHON,
    TAXIMETER,
    cpu_seconds,
    create_database,
    database_url,
    drop_database,
    free_port,
    spawn,
    stop,
    wait_ready,
    wrk,
)
from taximeter.pricing.models import ApiKey, BudgetConfig, Limit
from taximeter.proxy.gateway.keys import generate_key, hash_key, key_prefix
from taximeter.store.postgres import PostgresStore

ADMIN_TOKEN = "bench-admin-token"  # noqa: S105 -- the token of a server this run starts and stops
LIMITS = (
    Limit(name="per-user-daily", metric="cost", limit=10**15, window="daily", per="end_user"),
    Limit(name="rpm", metric="requests", limit=10**9, window="minute"),
)
SETUP_CONCURRENCY = 16


async def add_clients(url: str, count: int) -> list[str]:
    """``count`` clients with budgets, limits and keys; their keys."""
    store = await PostgresStore.open(url)
    await store.migrate()
    now = datetime.now(UTC)
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def add(i: int) -> str:
        client_id, key = f"t{i:05d}", generate_key()
        async with gate:
            await store.create_client(client_id, f"Tenant {i:05d}", now)
            config = BudgetConfig(
                client_id=client_id,
                mode="both",
                period="monthly",
                timezone="America/Sao_Paulo",
                currency="BRL",
                token_limit=10**12,
                cost_limit=Decimal(10**9),
            )
            await store.put_budget(config, now)
            await store.set_limits(client_id, LIMITS)
            await store.create_key(ApiKey(key_prefix(key), client_id, hash_key(key), now))
        return key

    try:
        keys = list(await asyncio.gather(*(add(i) for i in range(count))))
        async with store.connection() as conn:
            await conn.execute("ANALYZE")  # as autovacuum soon would: the planner knows the tables' sizes
        return keys
    finally:
        await store.close()


async def database_counters(url: str, name: str) -> tuple[int, int]:
    """Transactions and rows read so far in database ``name``."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit + xact_rollback AS xacts, tup_returned + tup_fetched AS rows "
            "FROM pg_stat_database WHERE datname = $1",
            name,
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["xacts"]), int(row["rows"])


async def redis_commands(url: str) -> int:
    client = aioredis.from_url(url)
    try:
        return int((await client.info("stats"))["total_commands_processed"])
    finally:
        await client.aclose()


async def idle_tick(
    admin_url: str, database: str, redis_url: str, pid: int, seconds: float
) -> dict[str, float]:
    """The work of one sweep tick (one per second) while no call comes."""
    await asyncio.sleep(2)  # start-up reads are over
    xacts0, rows0 = await database_counters(admin_url, database)
    commands0, cpu0 = await redis_commands(redis_url), cpu_seconds(pid)
    await asyncio.sleep(seconds)
    # The statistics collector reports a transaction within a second or so.
    await asyncio.sleep(1.5)
    xacts1, rows1 = await database_counters(admin_url, database)
    commands1, cpu1 = await redis_commands(redis_url), cpu_seconds(pid)
    # Each reading of the counters is itself a transaction in another database: not counted.
    return {
        "pg_xacts_per_tick": (xacts1 - xacts0) / seconds,
        "pg_rows_per_tick": (rows1 - rows0) / seconds,
        "redis_commands_per_tick": (commands1 - commands0 - 1) / seconds,
        "cpu_ms_per_tick": (cpu1 - cpu0) * 1000 / seconds,
    }


async def overview_p50(url: str, times: int = 5) -> tuple[float, int]:
    """Median ms of the overview page, and the number of clients it says it orders."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(url + "/dashboard/login") as resp:
            [csrf] = re.findall(r'name="csrf" value="([^"]+)"', await resp.text())
        form = {"csrf": csrf, "token": ADMIN_TOKEN, "next": "/dashboard"}
        async with http.post(url + "/dashboard/login", data=form, allow_redirects=False) as resp:
            assert resp.status == 303, resp.status
        took, text = [], ""
        for _ in range(times):
            started = time.perf_counter()
            async with http.get(url + "/dashboard", headers={"Accept-Language": "en-US"}) as resp:
                text = await resp.text()
                assert resp.status == 200, resp.status
            took.append((time.perf_counter() - started) * 1000)
    found = re.search(r"of ([\d,]+) clients", text)
    return statistics.median(took), int(found.group(1).replace(",", "")) if found else 0


async def admin_budgets_p50(url: str, times: int = 3) -> tuple[float, int]:
    """Median ms of ``GET /admin/budgets`` (every budget with its spend), and how many it listed."""
    took, listed = [], 0
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(times):
            started = time.perf_counter()
            async with http.get(url + "/admin/budgets", headers=headers) as resp:
                assert resp.status == 200, resp.status
                listed = len((await resp.json())["data"])
            took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took), listed


async def warm(url: str, keys: list[str]) -> None:
    """One call per key, 32 at a time: each key and budget loaded once."""
    gate = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as http:

        async def call(key: str) -> None:
            async with gate:
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                async with http.post(f"{url}/v1/chat/completions", data=CHAT, headers=headers) as resp:
                    assert resp.status == 200, (resp.status, await resp.text())
                    await resp.read()

        await asyncio.gather(*(call(key) for key in keys))


def wrk_keys(url: str, keys_file: Path, concurrency: int, duration_s: float) -> dict[str, Any]:
    """``wrk`` with a key picked at random per call from ``keys_file``."""
    env = {"BENCH_BODY": CHAT, "BENCH_KEYS": str(keys_file)}
    return wrk(f"{url}/v1/chat/completions", concurrency, duration_s, env, script="tenants.lua")


async def served(upstream: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{upstream}/served") as resp:
        return int((await resp.json()).get("tenants", 0))


async def events(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT COUNT(*) FROM usage_events"))
    finally:
        await conn.close()


async def one_count(count: int, args: argparse.Namespace, upstream: str, workdir: Path) -> dict[str, Any]:
    database = await create_database("taximeter_tenants")
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    redis_server = proc = None
    figures: dict[str, Any] = {"clients": count}
    try:
        redis_server = spawn(
            *("redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
        )
        started = time.perf_counter()
        keys = await add_clients(database_url(database), count)
        figures["setup_s"] = time.perf_counter() - started
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAXIMETER_")}
        env |= {
            "TAXIMETER_DATABASE_URL": database_url(database),
            "TAXIMETER_REDIS_URL": redis_url,
            "TAXIMETER_PORT": str(port),
            "TAXIMETER_ADMIN_TOKEN": ADMIN_TOKEN,
            "TAXIMETER_UPSTREAM_URL": f"{upstream}/tenants/v1",
            "TAXIMETER_UPSTREAM_API_KEY": "sk-bench",
            "TAXIMETER_SWEEP_INTERVAL_S": "1",
        }
        env |= {f"TAXIMETER_{name.upper()}": value for name, value in args.setting}
        proc = spawn(TAXIMETER, "serve", env=env, cwd=workdir)
        url = f"http://127.0.0.1:{port}"
        await wait_ready(f"{url}/healthz")
        figures |= await idle_tick(PG_ADMIN, database, redis_url, proc.pid, args.idle)
        figures["overview_ms"], figures["overview_clients"] = await overview_p50(url)
        figures["admin_budgets_ms"], figures["admin_budgets"] = await admin_budgets_p50(url)
        started = time.perf_counter()
        await warm(url, keys)
        figures["warm_s"] = time.perf_counter() - started
        keys_file = workdir / f"keys-{count}.txt"
        keys_file.write_text(keys[0] + "\n")
        one = wrk_keys(url, keys_file, args.concurrency, args.duration)
        keys_file.write_text("\n".join(keys) + "\n")
        many = wrk_keys(url, keys_file, args.concurrency, args.duration)
        for name, result in (("one", one), ("random", many)):
            if result["status_errors"] or result["other_errors"]:
                raise SystemExit(f"{count} clients, {name}: calls failed: {result}")
            figures[f"{name}_rps"] = result["requests"] / (result["duration_us"] / 1e6)
            figures[f"{name}_p50_ms"] = result["p50_us"] / 1000
            figures[f"{name}_p99_ms"] = result["p99_us"] / 1000
        await asyncio.sleep(1)  # the ledger writer's last batch
        figures["calls"] = await served(upstream)
        figures["events"] = await events(database_url(database))
    finally:
        for started in (proc, redis_server):
            if started is not None:
                stop(started)
        await drop_database(database)
    return figures


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.clients:
            upstream_port = free_port()  # a fresh upstream per count: its count of calls is this run's
            upstream_proc = spawn(PYTHON, "-m", "bench.upstream", str(upstream_port), cwd=HERE.parent)
            upstream = f"http://127.0.0.1:{upstream_port}"
            try:
                await wait_ready(f"{upstream}/served")
                figures = await one_count(count, args, upstream, Path(tmp))
            finally:
                stop(upstream_proc)
            print(json.dumps(figures), flush=True)
            if figures["events"] != figures["calls"]:
                raise SystemExit(f"{count} clients: {figures['events']} events for {figures['calls']} calls")
            if figures["admin_budgets"] != count:
                raise SystemExit(f"/admin/budgets listed {figures['admin_budgets']} of {count} budgets")
            if figures["overview_clients"] != count:
                raise SystemExit(f"the overview ordered {figures['overview_clients']} of {count} clients")
            results.append(figures)
    return results


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    base = results[0]
    lines = [
        f"# Many tenants (Postgres + Redis, {datetime.now(UTC):%Y-%m-%d})",
        "",
        "Each client has a key, a monthly budget and two limits (a daily cost cap per end user, "
        "requests per minute). One `taximeter serve`, sweeping every second. Idle figures are "
        f"per sweep tick, averaged over {args.idle:.0f} s with no call; admission is `wrk` at "
        f"concurrency {args.concurrency} for {args.duration:.0f} s, one client then a random client "
        "per call. Everything shares the machine's 2 cores.",
        "",
        "| clients | Postgres xacts / tick | rows read / tick | Redis commands / tick | CPU ms / tick "
        "| overview p50 ms | `/admin/budgets` p50 ms | one client req/s | p50 ms | p99 ms | random client req/s | p50 ms | p99 ms "
        "| p99 vs one client | events = calls |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for f in results:
        lines.append(
            f"| {f['clients']:,} | {f['pg_xacts_per_tick']:.1f} | {f['pg_rows_per_tick']:.0f} "
            f"| {f['redis_commands_per_tick']:.1f} | {f['cpu_ms_per_tick']:.1f} | {f['overview_ms']:.0f} "
            f"| {f['admin_budgets_ms']:.0f} "
            f"| {f['one_rps']:,.0f} | {f['one_p50_ms']:.2f} | {f['one_p99_ms']:.2f} "
            f"| {f['random_rps']:,.0f} | {f['random_p50_ms']:.2f} | {f['random_p99_ms']:.2f} "
            f"| {f['random_p99_ms'] / f['one_p99_ms']:.2f}x | {f['events']:,} = {f['calls']:,} |"
        )
    lines += [
        "",
        f"Setting up {results[-1]['clients']:,} clients through the store took "
        f"{results[-1]['setup_s']:.0f} s; one call per key to warm them, {results[-1]['warm_s']:.0f} s.",
        "",
        "Targets: sweeper work per tick independent of the number of clients "
        f"({base['clients']:,}: {base['pg_xacts_per_tick']:.1f} transactions, "
        f"{results[-1]['clients']:,}: {results[-1]['pg_xacts_per_tick']:.1f}); overview p50 <= 300 ms "
        f"({results[-1]['overview_ms']:.0f} ms at {results[-1]['clients']:,}); admission p99 with a random "
        f"client within 20% of one client's ({results[-1]['random_p99_ms'] / results[-1]['one_p99_ms']:.2f}x).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tenants", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients", type=lambda s: [int(c) for c in s.split(",")], default=[100, 1_000, 10_000]
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle sweeping measured")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk load per measure")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        type=lambda s: tuple(s.split("=", 1)),
        help="a setting of the proxy, NAME=VALUE (e.g. key_cache_s=60); repeatable",
    )
    parser.add_argument("--out", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    results = asyncio.run(run(args))
    text = report(results, args)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
