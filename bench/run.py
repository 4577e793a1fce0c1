"""The benchmark run: targets, load, measurements, the ledger check, the report.

Everything runs on 127.0.0.1 and is started here; only processes started here
are stopped (by pid). Targets are interleaved round by round so a change in
the machine's load hits them all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
TAXIMETER = str(Path(sys.executable).with_name("taximeter"))
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16})
STREAM = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 16,
        "stream": True,
    }
)


async def create_database(prefix: str) -> str:
    """A fresh Postgres database of this run, by name."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_database(name: str | None) -> None:
    """Drop a database this run created (None: there was none)."""
    if not name:
        return
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def database_url(name: str) -> str:
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Target:
    name: str
    url: str  # base URL ending in /v1
    key: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    count_events: Any = None  # async () -> int, for taximeter targets


@dataclass
class Result:
    target: str
    mode: str
    concurrency: int
    round: int
    requests: int
    ok: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float | None
    rss_mb: float | None
    ttfb_ms: float | None = None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _tree(pid: int) -> list[int]:
    return [pid, *(c for child in _children(pid) for c in _tree(child))]


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, field: str) -> list[int]:
    """``field`` of /proc/PID/status (in kB) for ``pid`` and its children."""
    values = []
    for p in _tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        values += [int(line.split()[1]) for line in lines if line.startswith(f"{field}:")]
    return values


def peak_rss_mb(pid: int) -> float:
    """The largest peak resident memory of ``pid`` and its worker processes."""
    return max(_status_kb(pid, "VmHWM"), default=0) / 1024


def rss_mb(pid: int) -> float:
    """Resident memory now of ``pid`` and its children (their worker processes)."""
    return sum(_status_kb(pid, "VmRSS")) / 1024


async def served(upstream: str, name: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{upstream}/served") as resp:
        return int((await resp.json()).get(name, 0))


async def memory_check(target: Target, upstream: str, checkpoints: tuple[int, ...]) -> list[dict[str, Any]]:
    """RSS after each checkpoint's number of calls (driven in 2 s bursts at
    concurrency 16), to show nothing per call outlives the call."""
    pid = target.procs[0].pid
    out = []
    for checkpoint in checkpoints:
        while await served(upstream, target.name) < checkpoint:
            await asyncio.to_thread(run_wrk, target, CHAT, 16, 2)
        await check_ledger(target, upstream)
        out.append(
            {"target": target.name, "requests": await served(upstream, target.name), "rss_mb": rss_mb(pid)}
        )
    return out


async def wait_ready(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def spawn(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=False
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # only processes this run started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def start_taximeter(
    name: str,
    upstream: str,
    workdir: Path,
    workers: int,
    production: bool,
    runner: tuple[str, ...] = (),
    *,
    limits: bool = False,
) -> Target:
    """taximeter serving ``name``'s config, with a client, key and budget
    (and five limits beside it, with ``limits``); ``runner`` goes before the
    command (e.g. a profiler)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXIMETER_")}
    env |= {
        "TAXIMETER_UPSTREAM_URL": upstream,
        "TAXIMETER_UPSTREAM_API_KEY": "sk-bench",
        "TAXIMETER_PORT": str(port),
    }
    database = None
    if production:
        database = await create_database("taximeter_bench")
        env |= {
            "TAXIMETER_DATABASE_URL": database_url(database),
            "TAXIMETER_REDIS_URL": REDIS,
            "TAXIMETER_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}:",
            "TAXIMETER_WORKERS": str(workers),
        }
    else:
        env["TAXIMETER_DATABASE_URL"] = f"sqlite:///{workdir}/{name}.db"

    def cli(*args: str) -> str:
        return subprocess.run(
            [TAXIMETER, *args], env=env, cwd=workdir, check=True, capture_output=True, text=True
        ).stdout

    cli("migrate")  # the CLI creates no database but by migrate
    cli("clients", "add", "bench")
    key = cli("keys", "create", "bench").strip()
    # Budgets on: every call is admitted by reservation and settled against it.
    cli(
        "budgets",
        "set",
        "bench",
        "--mode",
        "both",
        "--tokens",
        "1000000000000",
        "--cost",
        "1000000000",
        "--period",
        "monthly",
    )
    if limits:  # every kind the spec names, none ever reached: admission cost only
        declared = workdir / f"{name}-limits.toml"
        await asyncio.to_thread(declared.write_text, _LIMITS)
        cli("limits", "set", "bench", str(declared))
    proc = spawn(*runner, TAXIMETER, "serve", env=env, cwd=workdir)
    await wait_ready(f"http://127.0.0.1:{port}/readyz")

    query = "SELECT status, estimated, COUNT(*) FROM usage_events GROUP BY status, estimated"

    async def count_events() -> dict[tuple[int, bool], int]:
        """Events by (status, estimated)."""
        if database is None:

            def count() -> dict[tuple[int, bool], int]:
                with sqlite3.connect(f"{workdir}/{name}.db") as db:
                    return {(int(st), bool(e)): int(n) for st, e, n in db.execute(query)}

            return await asyncio.to_thread(count)
        conn = await asyncpg.connect(env["TAXIMETER_DATABASE_URL"])
        try:
            return {(int(st), bool(e)): int(n) for st, e, n in await conn.fetch(query)}
        finally:
            await conn.close()

    target = Target(name, f"http://127.0.0.1:{port}/v1", key, [proc], count_events)
    target.database = database  # type: ignore[attr-defined]
    return target


def wrk(
    url: str,
    concurrency: int,
    duration_s: float,
    env: dict[str, str],
    *,
    script: str = "bench.lua",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``wrk`` on ``url`` with a script of bench/ (its settings in ``env``)
    that ends with a ``BENCH_JSON`` line; that line's figures."""
    out = subprocess.run(
        [
            *("wrk", f"-t{min(concurrency, 2)}", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s"),
            *("--timeout", "10s"),
            *(arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")),
            *("-s", str(HERE / script), url),
        ],
        env={**os.environ, "BENCH_DIR": str(HERE), **env},
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH_JSON "))
    return dict(json.loads(line.removeprefix("BENCH_JSON ")))


def run_wrk(
    target: Target, body: str, concurrency: int, duration_s: float, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    env = {"BENCH_BODY": body, "BENCH_KEY": target.key}
    return wrk(f"{target.url}/chat/completions", concurrency, duration_s, env, headers=headers)


async def time_to_first_byte(target: Target, samples: int) -> float:
    """Median ms from sending a streamed chat call to its first body byte."""
    headers = {"Content-Type": "application/json"}
    if target.key:
        headers["Authorization"] = f"Bearer {target.key}"
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(samples):
            start = time.perf_counter()
            async with http.post(f"{target.url}/chat/completions", data=STREAM, headers=headers) as resp:
                await resp.content.readany()
                times.append((time.perf_counter() - start) * 1000)
                await resp.read()
    return statistics.median(times)


async def check_ledger(target: Target, upstream: str) -> None:
    """Every call the target made upstream is in its ledger exactly once.
    Calls cut off when the load stopped are still being relayed and metered
    (they were served, so they are charged): wait until both counts settle."""
    if target.count_events is None:
        return
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(f"{upstream}/served") as resp:
                made = (await resp.json()).get(target.name, 0)
            by_status = await target.count_events()
            count = sum(by_status.values())
            if count == made:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(
        f"{target.name}: {count} events in the ledger for {made} upstream calls: {by_status}"
    )


async def benchmark(args: argparse.Namespace) -> tuple[list[Result], list[dict[str, Any]]]:
    """The measurements, and the RSS checks (when ``args.memory``)."""
    workdir = Path(tempfile.mkdtemp(prefix="taximeter-bench-"))
    upstream_port, forwarder_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    started: list[Target] = []
    try:
        direct = Target(
            "direct",
            f"{upstream}/direct/v1",
            procs=[spawn(PYTHON, "-m", "bench.upstream", str(upstream_port), cwd=HERE.parent)],
        )
        started.append(direct)
        await wait_ready(f"{upstream}/served")
        forwarder = Target(
            "forwarder",
            f"http://127.0.0.1:{forwarder_port}/v1",
            procs=[
                spawn(
                    PYTHON,
                    "-m",
                    "bench.forwarder",
                    str(forwarder_port),
                    f"{upstream}/forwarder/v1",
                    cwd=HERE.parent,
                )
            ],
        )
        started.append(forwarder)
        await wait_ready(f"http://127.0.0.1:{forwarder_port}/")
        for name, workers, production, limits in args.configs:
            started.append(
                await start_taximeter(
                    name, f"{upstream}/{name}/v1", workdir, workers, production, limits=limits
                )
            )
        results: list[Result] = []
        memory: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            for mode, body in (("chat", CHAT), ("stream", STREAM)):
                for concurrency in args.concurrency:
                    for target in started:
                        results.append(await measure(target, mode, body, concurrency, round_, args))
                        await check_ledger(target, upstream)
        if args.memory:
            # Fresh processes, so the counts are their own: RSS after a tenth, then after all.
            for name, production in (("memory-embedded", False), ("memory-pg-redis", True)):
                fresh = await start_taximeter(name, f"{upstream}/{name}/v1", workdir, 1, production)
                started.append(fresh)
                memory.extend(await memory_check(fresh, upstream, (args.memory // 10, args.memory)))
        return results, memory
    finally:
        for target in started:
            for proc in target.procs:
                stop(proc)
        for target in started:
            await drop_database(getattr(target, "database", None))
        shutil.rmtree(workdir, ignore_errors=True)


async def measure(
    target: Target, mode: str, body: str, concurrency: int, round_: int, args: argparse.Namespace
) -> Result:
    pid = target.procs[0].pid
    cpu_before = cpu_seconds(pid)
    stats = await asyncio.to_thread(run_wrk, target, body, concurrency, args.duration)
    fields = result_fields(target, mode, concurrency, round_, stats, cpu_seconds(pid) - cpu_before)
    ttfb = None
    if mode == "stream" and concurrency == 1:
        ttfb = await time_to_first_byte(target, args.ttfb_samples)
    return Result(**fields, rss_mb=peak_rss_mb(pid), ttfb_ms=ttfb)


def result_fields(
    target: Target, mode: str, concurrency: int, round_: int, stats: dict[str, Any], cpu: float
) -> dict[str, Any]:
    """A :class:`Result`'s figures from one ``wrk`` run on ``target`` and the
    CPU its processes spent meanwhile (memory and first bytes are the caller's)."""
    requests = stats["requests"]
    return {
        "target": target.name,
        "mode": mode,
        "concurrency": concurrency,
        "round": round_,
        "requests": requests,
        "ok": requests - stats["status_errors"] - stats["other_errors"],
        "rps": requests / (stats["duration_us"] / 1e6),
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "cpu_ms_per_request": 1000 * cpu / requests if requests else None,
    }


CONFIGS = {
    "embedded": ("taximeter-embedded", 1, False, False),
    "pg-redis": ("taximeter-pg-redis", 1, True, False),
    "pg-redis-limits": ("taximeter-pg-redis-limits", 1, True, True),
    "pg-redis-2w": ("taximeter-pg-redis-2w", 2, True, False),
}
_LIMITS = """
[[limits]]
name = "per-user"
metric = "cost"
limit = "1000000"
window = "daily"
per = "end_user"
[[limits]]
name = "month"
metric = "tokens"
limit = 1000000000000
window = "monthly"
[[limits]]
name = "rpm"
metric = "requests"
limit = 100000000
window = "minute"
[[limits]]
name = "tpm"
metric = "tokens"
limit = 1000000000000
window = "minute"
[[limits]]
name = "parallel"
metric = "concurrent"
limit = 100000
"""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 16, 64])
    parser.add_argument(
        "--configs",
        type=lambda s: [CONFIGS[c] for c in s.split(",")],
        default=list(CONFIGS.values()),
        help="embedded,pg-redis,pg-redis-limits (five limits beside the budget),pg-redis-2w",
    )
    parser.add_argument("--ttfb-samples", type=int, default=200)
    parser.add_argument(
        "--memory",
        type=int,
        default=100_000,
        help="calls for the RSS check (RSS after a tenth of them, then after all; 0: skip)",
    )
    parser.add_argument("--out", type=Path, default=HERE, help="where REPORT.md and results.jsonl go")
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds: that it runs and the ledger is exact"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.rounds, args.concurrency, args.ttfb_samples = 1.0, 1, [4], 5
        args.memory = 0
        args.configs = [("taximeter-embedded-limits", 1, False, True)]  # the limits' path too
        args.out = None
    return args


def main(argv: list[str] | None = None) -> int:
    from bench.report import write_report

    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    args = parse(argv)
    results, memory = asyncio.run(benchmark(args))
    if args.out is not None:
        write_report(results, memory, args, args.out)
    for r in results:
        print(json.dumps(asdict(r)))
    return 0


def machine() -> str:
    return f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"
