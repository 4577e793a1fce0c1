"""A big ledger: ``python -m bench.ledger [--events 10000000]``.

Fills a fresh Postgres database on 127.0.0.1 with N usage events spread over
the last 30 days (COPY, not through the proxy): 1,000 clients, one of them
("big") holding a tenth of the events, each with 20 end users of its own
(20,000 in all), eight models. The
daily totals are then built as migration 14 builds them for a ledger that
existed before it. A ``taximeter serve`` on that database is measured:

- ``/admin/usage`` over 30 days by model, by day and by end user (p50 of 5),
  beside the same report summed from the events alone (what it cost before
  the daily totals);
- the dashboard's usage page and overview (p50 of 5);
- the CSV export of the big client's events: rows (every one of them, checked
  against the table), seconds, and how much the server's RSS grew;
- ledger write throughput (``record_many`` in batches of 100) into the big
  table and into an empty one.

Only processes it started are stopped (by pid); its databases are dropped at
the end. Prints a Markdown report (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.run import (
    PG_ADMIN,
    TAXIMETER,
    create_database,
    drop_database,
    free_port,
    rss_mb,
    spawn,
    stop,
    wait_ready,
)
from taximeter.pricing.models import UsageEvent
from taximeter.pricing.times import utc_month_start
from taximeter.store.ledger_months import create_month, month_table
from taximeter.store.migrations import MIGRATIONS, render
from taximeter.store.postgres import PostgresStore

ADMIN_TOKEN = "bench-admin-token"  # noqa: S105 -- the token of a server this run starts and stops
MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-5",
    "gpt-5-mini",
    "text-embedding-3-small",
    "tts-1",
    "whisper-1",
    "o3",
)
KINDS = {"text-embedding-3-small": "embeddings", "tts-1": "tts", "whisper-1": "whisper"}
CHUNK = 50_000
COLUMNS = (
    "request_id", "client_id", "end_user", "api_type", "model", "endpoint", "status", "input_tokens",
    "output_tokens", "cost_usd", "cost", "currency", "exchange_rate", "estimated", "unpriced",
    "created_at", "markup", "list_cost", "cached_tokens", "reasoning_tokens", "characters",
    "audio_seconds", "images",
)  # fmt: skip


def _rows(count: int, seed: int, now: datetime) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        model = rng.choice(MODELS)
        number = 999 if rng.random() < 0.1 else rng.randrange(999)
        client = "big" if number == 999 else f"c{number:03d}"
        user = f"u{number * 20 + rng.randrange(20)}"  # each client's own 20 end users
        at = now - timedelta(seconds=rng.random() * 30 * 86_400)
        tokens_in, tokens_out = rng.randrange(10, 4000), rng.randrange(0, 800)
        usd = Decimal(tokens_in * 250 + tokens_out * 1000).scaleb(-9)
        rows.append(
            (
                uuid.uuid4().hex, client, user, KINDS.get(model, "chat"), model,
                "/v1/chat/completions", 200, tokens_in, tokens_out, usd, usd * 5, "BRL", Decimal(5), False,
                False, at, Decimal(1), usd * 5, 0, 0, 0, Decimal(0), 0,
            )
        )  # fmt: skip
    return rows


async def fill(url: str, events: int) -> float:
    """COPY ``events`` rows into a migrated database, then its daily totals; seconds taken."""
    now = datetime.now(UTC)
    conn = await asyncpg.connect(url)
    started = time.perf_counter()
    try:
        await conn.executemany(
            "INSERT INTO clients (id, name, created_at) VALUES ($1, $1, $2)",
            [(c, now - timedelta(days=60)) for c in ["big", *(f"c{i:03d}" for i in range(999))]],
        )
        for back in range(3):  # the month partitions the last 30 days fall in
            start = utc_month_start(now, back)
            month = (start.year, start.month)
            if await conn.fetchval("SELECT to_regclass($1)", month_table(month)) is None:
                for statement in create_month(month):
                    await conn.execute(statement)
        for first in range(0, events, CHUNK):
            rows = await asyncio.to_thread(_rows, min(CHUNK, events - first), first, now)
            await conn.copy_records_to_table("usage_events", records=rows, columns=COLUMNS)
        await conn.execute("INSERT INTO event_ids SELECT request_id, created_at FROM usage_events")
        for table in ("usage_daily", "usage_daily_users"):
            await conn.execute(f"DELETE FROM {table}")
        for statement in dict(MIGRATIONS)[14]:
            if statement.lstrip().startswith("INSERT INTO usage_daily"):  # as for a ledger older than them
                await conn.execute(render(statement, PostgresStore.dialect.types))
        # As autovacuum would have by now: the writes measured next do not share the machine with it.
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def p50(call: Any, times: int = 5) -> float:
    took = []
    for _ in range(times):
        started = time.perf_counter()
        await call()
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


async def write_rate(url: str, count: int = 20_000) -> float:
    """Events per second ``record_many`` takes into the ledger at ``url``."""
    store = await PostgresStore.open(url)
    now = datetime.now(UTC)
    made = [
        UsageEvent(
            request_id=uuid.uuid4().hex, client_id=f"c{i % 999:03d}", api_type="chat", model="gpt-4o-mini",
            endpoint="/v1/chat/completions", status=200, created_at=now, currency="BRL",
            exchange_rate=Decimal(5), cost_usd=Decimal("0.000123"), cost=Decimal("0.000615"),
            input_tokens=100, output_tokens=20, end_user=f"u{(i % 999) * 20 + i % 20}",
        )
        for i in range(count)
    ]  # fmt: skip
    try:
        started = time.perf_counter()
        for first in range(0, count, 100):
            await store.record_many(made[first : first + 100])
        return count / (time.perf_counter() - started)
    finally:
        await store.close()


async def run(events: int) -> dict[str, Any]:
    big, empty = await create_database("taximeter_ledger"), await create_database("taximeter_ledger")
    base = PG_ADMIN.rsplit("/", 1)[0]
    figures: dict[str, Any] = {"events": events}
    proc = None
    try:
        for name in (big, empty):
            store = await PostgresStore.open(f"{base}/{name}")
            await store.migrate()
            await store.close()
        figures["fill_s"] = await fill(f"{base}/{big}", events)
        conn = await asyncpg.connect(f"{base}/{big}")
        figures["big_events"] = await conn.fetchval(
            "SELECT COUNT(*) FROM usage_events WHERE client_id = 'big'"
        )
        figures["daily_rows"] = await conn.fetchval("SELECT COUNT(*) FROM usage_daily")
        figures["daily_user_rows"] = await conn.fetchval("SELECT COUNT(*) FROM usage_daily_users")
        await conn.close()
        figures["write_empty_per_s"] = await write_rate(f"{base}/{empty}")
        figures["write_big_per_s"] = await write_rate(f"{base}/{big}")

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAXIMETER_")}
        env |= {
            "TAXIMETER_DATABASE_URL": f"{base}/{big}",
            "TAXIMETER_PORT": str(port),
            "TAXIMETER_ADMIN_TOKEN": ADMIN_TOKEN,
            "TAXIMETER_UPSTREAM_URL": "http://127.0.0.1:9/v1",
        }
        with tempfile.TemporaryDirectory() as workdir:
            proc = spawn(TAXIMETER, "serve", env=env, cwd=Path(workdir))
            url = f"http://127.0.0.1:{port}"
            await wait_ready(f"{url}/healthz")
            figures |= await measure(url, f"{base}/{big}", proc.pid)
    finally:
        if proc is not None:
            stop(proc)
        await drop_database(big)
        await drop_database(empty)
    return figures


async def measure(url: str, database: str, pid: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:

        async def get(path: str, **headers: str) -> None:
            async with http.get(url + path, headers=headers) as resp:
                assert resp.status == 200, (path, resp.status, await resp.text())
                await resp.read()

        for group in ("model", "day", "end_user"):
            figures[f"usage_{group}_ms"] = await p50(
                lambda g=group: get(f"/admin/usage?group_by={g}", **bearer)
            )
        store = await PostgresStore.open(database)
        try:
            now = datetime.now(UTC)
            month = (now - timedelta(days=30), now)
            for group in ("model", "day", "end_user"):

                async def totals(g: str = group) -> None:
                    await store.usage_report(None, *month, g)

                async def raw(g: str = group) -> None:
                    await store.events_only_report(None, *month, g)

                figures[f"store_{group}_ms"] = await p50(totals)
                figures[f"events_only_{group}_ms"] = await p50(raw, times=3)
        finally:
            await store.close()

        async with http.get(url + "/dashboard/login") as resp:
            [csrf] = re.findall(r'name="csrf" value="([^"]+)"', await resp.text())
        form = {"csrf": csrf, "token": ADMIN_TOKEN, "next": "/dashboard"}
        async with http.post(url + "/dashboard/login", data=form, allow_redirects=False) as resp:
            assert resp.status == 303
        figures["dashboard_usage_ms"] = await p50(lambda: get("/dashboard/usage"))
        figures["dashboard_usage_client_ms"] = await p50(lambda: get("/dashboard/usage?client_id=big"))
        figures["dashboard_overview_ms"] = await p50(lambda: get("/dashboard"), times=3)

        before = rss_mb(pid)
        highest = before
        started = time.perf_counter()
        rows = 0
        async with http.get(url + "/admin/usage/events?format=csv&client_id=big", headers=bearer) as resp:
            async for line in resp.content:
                rows += line.count(b"\n")
                if rows % 20_000 == 0:  # the server's memory, sampled as the rows arrive
                    highest = max(highest, rss_mb(pid))
        figures["csv_rows"] = rows - 1  # the header
        figures["csv_s"] = time.perf_counter() - started
        figures["csv_rss_growth_mb"] = max(highest, rss_mb(pid)) - before
    return figures


def report(f: dict[str, Any]) -> str:
    lines = [
        f"# A ledger of {f['events']:,} events (Postgres, {datetime.now(UTC):%Y-%m-%d})",
        "",
        f"Filled with COPY and daily totals built in {f['fill_s']:.0f} s: {f['daily_rows']:,} rows of "
        f"daily totals by model and {f['daily_user_rows']:,} by end user.",
        "",
        "| read, 30 days | HTTP p50 ms | store p50 ms | the same summed from the events, ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for group in ("model", "day", "end_user"):
        lines.append(
            f"| `/admin/usage` by {group} | {f[f'usage_{group}_ms']:.0f} | {f[f'store_{group}_ms']:.0f} "
            f"| {f[f'events_only_{group}_ms']:.0f} |"
        )
    lines += [
        f"| dashboard usage page, every client | {f['dashboard_usage_ms']:.0f} | | |",
        f"| dashboard usage page, the big client | {f['dashboard_usage_client_ms']:.0f} | | |",
        f"| dashboard overview (1,000 clients) | {f['dashboard_overview_ms']:.0f} | | |",
        "",
        f"CSV export of the big client: {f['csv_rows']:,} rows in {f['csv_s']:.1f} s, "
        f"server RSS grew {f['csv_rss_growth_mb']:.1f} MB.",
        "",
        f"Ledger writes (record_many, batches of 100): {f['write_big_per_s']:,.0f} events/s into the "
        f"big table, {f['write_empty_per_s']:,.0f} into an empty one "
        f"({100 * f['write_big_per_s'] / f['write_empty_per_s']:.0f}%).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the big ledger")
    parser.add_argument("--out", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.events))
    print(json.dumps(figures))
    if figures["csv_rows"] != figures["big_events"]:
        raise SystemExit(f"the CSV export had {figures['csv_rows']} rows of {figures['big_events']}")
    text = report(figures)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
