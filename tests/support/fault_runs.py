"""Fault scenarios of the ledger, repeated against private servers, with figures.

    .venv/bin/python -m tests.support.fault_runs [--runs 5] [--events 500] [--only NAME,...] [-v]

Each scenario runs ``--runs`` times on a private Postgres (and Redis) of this
command's own, each run on a fresh database, and reports per run: events
submitted, recorded (in the ledger), quarantined, lost (submitted but in
neither), doubled (ledger rows past one per request id, plus counter drift:
budget counters minus the ledger's sums), and the seconds ``flush()`` stayed
blocked once the fault was over. It exits 1 if any run lost or doubled an
event, or did not end.

A scenario is an async function ``(Servers, run number, options) -> Figures``
in :data:`SCENARIOS`; add one there (a proxy killed with -9 under load, Redis
killed and restarted...) and it is run and tabled like the others.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from taximeter.pricing.models import UsageEvent
from taximeter.store.ledger import LedgerWriter
from taximeter.store.postgres import PostgresStore
from taximeter.store.sql import SqlStore
from taximeter.store.sqlite import SqliteStore
from tests.support.factories import T0, seeded, usage_event
from tests.support.fault_scenarios import TOKENS_PER_CALL, Serve, kill_under_load, redis_restart_overrun
from tests.support.private_services import PrivatePostgres, PrivateRedis, missing_binaries

FLUSH_LIMIT_S = 60.0  # a flush blocked longer than this counts the run as wedged


@dataclass
class Servers:
    """What scenarios run against; all private to this command."""

    pg: PrivatePostgres
    redis: PrivateRedis
    workdir: Path


@dataclass
class Options:
    events: int = 500


@dataclass
class Figures:
    scenario: str
    run: int
    submitted: int = 0
    recorded: int = 0
    quarantined: int = 0
    lost: int = 0
    doubled: int = 0
    blocked_s: float = 0.0
    seconds: float = 0.0
    note: str = ""
    failed: bool = field(default=False)

    @property
    def ok(self) -> bool:
        return not self.failed and self.lost == 0 and self.doubled == 0


Scenario = Callable[[Servers, int, Options], Awaitable[Figures]]


class _Tally(logging.Handler):
    """Counts the writer's log events by name (retries show the faults landed)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.getMessage()] += 1


TALLY = _Tally()


def event(n: int, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "input_tokens": n % 97 + 1,
        "output_tokens": 3,
        "cost": Decimal(n % 89 + 1) / 1000,
    }
    return usage_event(f"req-{n:06d}", T0 + timedelta(milliseconds=n), **{**values, **fields})


async def _count(figures: Figures, store: SqlStore, good: list[str], poison: list[str]) -> None:
    """Fill in recorded, quarantined, lost and doubled from what the store holds."""
    async with store.connection() as conn:
        rows = await conn.fetchall("SELECT request_id FROM usage_events WHERE client_id = ?", "acme")
        kept = await conn.fetchall("SELECT request_id FROM quarantined_events")
    in_ledger = [r["request_id"] for r in rows]
    quarantined = {r["request_id"] for r in kept}
    figures.recorded = len(set(in_ledger) & set(good))
    figures.quarantined = len(quarantined & set(poison))
    figures.lost = len(set(good) - set(in_ledger)) + len(set(poison) - quarantined)
    figures.doubled = len(in_ledger) - len(set(in_ledger)) + len(set(in_ledger) - set(good))
    [state] = await store.list_budgets(T0)
    tokens, nanos = await store.ledger_totals("acme", state.period_start)
    drift = abs(state.tokens_used - tokens) + (state.cost_used_nanos != nanos)
    if drift:
        figures.doubled += drift
        figures.note += f" counters drift: tokens {state.tokens_used} vs ledger {tokens};"
    if quarantined - set(poison):
        figures.failed = True
        figures.note += f" {len(quarantined - set(poison))} good events quarantined;"


async def _flushed(writer: LedgerWriter, figures: Figures) -> None:
    """Wait for the writer, timing how long flush() blocks."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(writer.flush(), FLUSH_LIMIT_S)
    except TimeoutError:
        figures.failed = True
        figures.note += f" flush still blocked after {FLUSH_LIMIT_S:.0f} s ({writer.pending} pending);"
    figures.blocked_s = time.monotonic() - started
    if not writer.alive:
        figures.failed = True
        figures.note += " writer task ended;"


async def terminated_connections(servers: Servers, run: int, options: Options) -> Figures:
    """(a) Every backend of the database terminated every few ms while events stream in."""
    figures = Figures("terminated-connections", run)
    url = await servers.pg.create_database()
    store = await seeded(await PostgresStore.open(url, max_size=4))
    writer = LedgerWriter(store, retry_max_s=0.2, linger_s=0.001)
    writer.start()
    streaming = True
    ended = 0

    async def terminate() -> None:
        nonlocal ended
        while streaming:
            ended += await servers.pg.terminate_connections(url.rsplit("/", 1)[1])
            await asyncio.sleep(0.003)

    terminator = asyncio.create_task(terminate())
    try:
        for n in range(options.events):
            await writer.submit(event(n))
            figures.submitted += 1
            if n % 2:
                await asyncio.sleep(0.003)  # a stream of about a second, not one batch
        streaming = False
        await terminator
        await _flushed(writer, figures)
        figures.note += f" {ended} backends terminated;"
        await _count(figures, store, [f"req-{n:06d}" for n in range(figures.submitted)], [])
    finally:
        streaming = False
        await writer.close(timeout_s=5)
        await store.close()
    return figures


async def postgres_stopped(servers: Servers, run: int, options: Options) -> Figures:
    """(b) The server stopped for ~2 s and started again while events flow."""
    figures = Figures("postgres-stopped", run)
    url = await servers.pg.create_database()
    store = await seeded(await PostgresStore.open(url, max_size=4))
    writer = LedgerWriter(store, retry_max_s=0.5)
    writer.start()

    async def submit(count: int) -> None:
        for _ in range(count):
            await writer.submit(event(figures.submitted))
            figures.submitted += 1
            await asyncio.sleep(0.002)

    try:
        await submit(options.events // 4)
        await servers.pg.stop()
        down_until = time.monotonic() + 2
        while time.monotonic() < down_until:
            await submit(10)
        figures.note += f" {writer.pending} pending while down;"
        waiting = asyncio.create_task(writer.flush())  # a caller blocked since the outage
        await servers.pg.start()
        back = time.monotonic()
        await asyncio.wait_for(waiting, FLUSH_LIMIT_S)
        recovered_s = time.monotonic() - back
        await submit(options.events // 4)
        await _flushed(writer, figures)
        figures.blocked_s = max(figures.blocked_s, recovered_s)  # a flush waiting since the outage
        await _count(figures, store, [f"req-{n:06d}" for n in range(figures.submitted)], [])
    finally:
        await servers.pg.start()
        await writer.close(timeout_s=5)
        await store.close()
    return figures


def _poison(sqlite: bool) -> list[UsageEvent]:
    kinds = [
        event(900_000, input_tokens=2**63),  # past BIGINT
        event(900_001, cost=Decimal("1e25")),  # past any money column
        event(900_002, cost=Decimal("NaN")),
        event(900_003, output_tokens=2**62, input_tokens=2**62),  # its sum overflows the counter
    ]
    if sqlite:
        kinds.append(event(900_004, cost=Decimal("1e12")))  # 1e21 nanos: past 64 bits
    return kinds


async def _poison_run(name: str, store: SqlStore, run: int, options: Options) -> Figures:
    figures = Figures(name, run)
    writer = LedgerWriter(store, retry_max_s=0.2)
    writer.start()
    poison = _poison(isinstance(store, SqliteStore))
    good = [event(n) for n in range(options.events)]
    step = max(1, len(good) // (len(poison) + 1))
    batch: list[UsageEvent] = []
    for i, bad in enumerate(poison):
        batch += [*good[i * step : (i + 1) * step], bad]
    batch += good[len(poison) * step :]
    try:
        for e in batch:
            await writer.submit(e)
            figures.submitted += 1
        await _flushed(writer, figures)
        await _count(figures, store, [e.request_id for e in good], [e.request_id for e in poison])
    finally:
        await writer.close(timeout_s=5)
        await store.close()
    return figures


async def poison_postgres(servers: Servers, run: int, options: Options) -> Figures:
    """(c) Events the store refuses, among good ones, on Postgres."""
    store = await seeded(await PostgresStore.open(await servers.pg.create_database(), max_size=4))
    return await _poison_run("poison-postgres", store, run, options)


async def poison_sqlite(servers: Servers, run: int, options: Options) -> Figures:
    """(c) The same on SQLite."""
    path = servers.workdir / f"poison-{run}.db"
    store = await seeded(await SqliteStore.open(f"sqlite:///{path}"))
    return await _poison_run("poison-sqlite", store, run, options)


@asynccontextmanager
async def _served() -> AsyncIterator[Serve]:
    """Serve aiohttp apps on free ports of 127.0.0.1 until the block ends."""
    started: list[TestServer] = []

    async def serve(app: web.Application) -> TestServer:
        server = TestServer(app)
        await server.start_server()
        started.append(server)
        return server

    try:
        yield serve
    finally:
        for server in reversed(started):
            await server.close()


async def proxy_killed(servers: Servers, run: int, options: Options) -> Figures:
    """(d) A proxy on Postgres + Redis SIGKILLed with 16 calls in flight; a
    second proxy's sweeper records what it left."""
    workdir = servers.workdir / f"killed-{run}"
    await asyncio.to_thread(workdir.mkdir)
    pg_url = await servers.pg.create_database()
    async with _served() as serve:
        seen = await kill_under_load(workdir, pg_url, servers.redis.url, f"faults-{run}:", serve)
    figures = Figures("proxy-killed", run, submitted=seen["reached_upstream"], recorded=seen["recorded"])
    figures.lost = seen["answered_missing"] + max(0, seen["reached_upstream"] - seen["recorded"])
    drift = {seen["ledger_tokens"], seen["counter_tokens"], seen["gate_tokens"]}
    figures.doubled = 0 if len(drift) == 1 else 1
    figures.note = (
        f" answered {seen['answered']}, charged unsent {seen['recorded'] - seen['reached_upstream']},"
        f" tokens ledger/counters/gate {seen['ledger_tokens']}/{seen['counter_tokens']}/{seen['gate_tokens']};"
    )
    return figures


async def redis_restarted(servers: Servers, run: int, options: Options) -> Figures:
    """(e) Redis killed and restarted while calls run against a token limit,
    with calls in flight through each gate (one process), and across two
    processes; tokens spent past the limit, against the README's bounds."""
    cases = [("redis", 1, TOKENS_PER_CALL), ("store", 1, TOKENS_PER_CALL), ("redis", 2, 9 * TOKENS_PER_CALL)]
    overruns = []
    async with _served() as serve:
        for slow_through, processes, _ in cases:
            pg_url = await servers.pg.create_database()
            limit = 20 * TOKENS_PER_CALL
            overruns.append(
                await redis_restart_overrun(
                    pg_url, servers.redis, serve, limit, slow_through=slow_through, processes=processes
                )
            )
    figures = Figures("redis-restarted", run)
    figures.note = (
        f" overrun tokens via redis/store/two processes: {overruns},"
        f" bounds {[bound for _, _, bound in cases]};"
    )
    figures.failed = any(o > bound for o, (_, _, bound) in zip(overruns, cases, strict=True))
    return figures


SCENARIOS: list[tuple[str, Scenario]] = [
    ("terminated-connections", terminated_connections),
    ("postgres-stopped", postgres_stopped),
    ("poison-postgres", poison_postgres),
    ("poison-sqlite", poison_sqlite),
    ("proxy-killed", proxy_killed),
    ("redis-restarted", redis_restarted),
]

_COLUMNS = (
    "scenario",
    "run",
    "submitted",
    "recorded",
    "quarantined",
    "lost",
    "doubled",
    "blocked s",
    "run s",
)


def _row(f: Figures) -> list[str]:
    return [
        f.scenario,
        str(f.run),
        str(f.submitted),
        str(f.recorded),
        str(f.quarantined),
        str(f.lost),
        str(f.doubled),
        f"{f.blocked_s:.2f}",
        f"{f.seconds:.2f}",
    ]


def table(results: list[Figures]) -> str:
    rows = [list(_COLUMNS), *(_row(f) for f in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {f.scenario} #{f.run}:{f.note}" for f in results if f.note]
    failed = [f"  FAILED {f.scenario} #{f.run}" for f in results if not f.ok]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []) + failed)


@asynccontextmanager
async def _removed(path: Path) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


async def run_all(runs: int, options: Options, only: set[str] | None) -> list[Figures]:
    results: list[Figures] = []
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="taximeter-faults-"))
    async with PrivatePostgres() as pg, PrivateRedis() as redis, _removed(workdir):
        servers = Servers(pg, redis, workdir)
        for name, scenario in SCENARIOS:
            if only and name not in only:
                continue
            for run in range(1, runs + 1):
                await pg.start()  # a scenario that failed half-way leaves it up for the next
                started = time.monotonic()
                TALLY.counts.clear()
                try:
                    figures = await scenario(servers, run, options)
                except Exception as exc:
                    figures = Figures(name, run, failed=True, note=f" raised {type(exc).__name__}: {exc};")
                figures.seconds = time.monotonic() - started
                if TALLY.counts:
                    figures.note += (
                        " log: " + ", ".join(f"{k} x{v}" for k, v in sorted(TALLY.counts.items())) + ";"
                    )
                results.append(figures)
                print(f"{name} #{run}: {'ok' if figures.ok else 'FAILED'}", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fault_runs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of each scenario (default 5)")
    parser.add_argument("--events", type=int, default=500, help="good events per run (default 500)")
    parser.add_argument(
        "--only", default="", help="comma-separated scenario names: " + ", ".join(n for n, _ in SCENARIOS)
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the writer's log")
    args = parser.parse_args(argv)
    missing = missing_binaries()
    if missing:
        print(f"cannot start private servers; missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for handler in logging.root.handlers:  # the writer's log is shown with -v, tallied always
        handler.setLevel(logging.WARNING if args.verbose else logging.CRITICAL)
    logging.getLogger("taximeter.ledger").addHandler(TALLY)
    only = {n.strip() for n in args.only.split(",") if n.strip()} or None
    results = asyncio.run(run_all(args.runs, Options(events=args.events), only))
    print(table(results))
    return 0 if all(f.ok for f in results) else 1


if __name__ == "__main__":
    sys.exit(main())
