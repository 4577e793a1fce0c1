"""The ``streams`` scenario: thousands of slow streams open at once.

    python -m bench.streams [--streams 2000] [--chunks 100] [--seconds 10] [--out bench/STREAMS.md]

The fake upstream (bench/upstream.py's paced route) streams every chat
completion as ``--chunks`` chunks spread evenly over ``--seconds``, then the
usage chunk (asked for with ``stream_options.include_usage``) and
``data: [DONE]``. A load generator in a process of its own (``python -m
bench.streams drive ...``, on uvloop) opens every stream within ``--ramp``
seconds and notes when each chunk arrives. The setups run one after the
other, each in a fresh process: ``direct`` (no proxy: what the harness itself
adds), the bare forwarder on asyncio's loop and on uvloop, taximeter embedded
(SQLite, in-process gate) and taximeter on Postgres + Redis, both with a
budget so every call is admitted by reservation and settled.

Measured per setup: CPU of the target's process tree per relayed chunk, its
RSS idle, at the most streams open at once and at its peak (VmHWM), the delay
it adds between chunks, the streams completed and, for taximeter, that the
ledger holds exactly one event per stream with the token counts of the usage
chunk that stream received. Everything runs on 127.0.0.1; only processes
started here are stopped (by pid); a Postgres database made here is dropped
and the Redis keys under its fresh prefix are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis.asyncio

from bench.profile import profiled
from bench.run import (
    HERE,
    PG_ADMIN,
    PYTHON,
    REDIS,
    Target,
    check_ledger,
    cpu_seconds,
    free_port,
    machine,
    peak_rss_mb,
    rss_mb,
    spawn,
    start_taximeter,
    stop,
    wait_ready,
)
from bench.upstream import raise_fd_limit

SETUPS = ("direct", "forwarder-asyncio", "forwarder-uvloop", "taximeter-embedded", "taximeter-pg-redis")
BASELINE = "forwarder-uvloop"
TAXIMETERS = {"taximeter-embedded": False, "taximeter-pg-redis": True}  # name -> on Postgres + Redis
CPU_RATIO, RSS_OVER_MB, DELAY_P99_MS = 1.2, 40.0, 5.0  # the targets
BODY = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
)


# The load generator (its own process).


@dataclass
class Stream:
    """One stream as the load generator saw it: when each upstream write
    arrived (a paced chunk, or the last write's ``[DONE]``) and its usage."""

    status: int = 0
    request_id: str | None = None
    completion: str | None = None
    arrivals: list[float] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    done: bool = False
    error: str | None = None

    def on_event(self, event: bytes, now: float) -> None:
        if event == b"data: [DONE]":
            self.done = True
            self.arrivals.append(now)
        elif b'"finish_reason":null' in event:  # a paced chunk
            self.arrivals.append(now)
            if self.completion is None:
                self.completion = orjson.loads(event[6:])["id"]
        elif b'"choices":[]' in event:  # the usage chunk
            self.usage = orjson.loads(event[6:])["usage"]

    def complete(self, writes: int) -> bool:
        return (
            self.error is None
            and self.status == 200
            and self.done
            and self.usage is not None
            and len(self.arrivals) == writes
        )


async def _read(response: aiohttp.ClientResponse, stream: Stream) -> None:
    rest = b""
    async for data in response.content.iter_any():
        now = time.monotonic()
        *events, rest = (rest + data).split(b"\n\n")
        for event in events:
            stream.on_event(event, now)


async def _one(http: aiohttp.ClientSession, url: str, headers: dict[str, str], at: float) -> Stream:
    """One stream, opened at monotonic time ``at``."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    stream = Stream()
    try:
        async with http.post(url, data=BODY, headers=headers) as response:
            stream.status = response.status
            stream.request_id = response.headers.get("X-Taximeter-Request-Id")
            if response.status == 200:
                await _read(response, stream)
            else:
                stream.error = f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"[:120]
    return stream


def spread(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of ``values`` (seconds) in ms, nearest rank."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {"p50": rank(0.5), "p99": rank(0.99), "max": round(1000 * ordered[-1], 3)}


def summarise(
    streams: list[Stream], sent: dict[str, list[float]], args: argparse.Namespace
) -> dict[str, Any]:
    """The delays of the completed streams, against the upstream's send times."""
    writes, gap = args.chunks + 1, args.seconds / args.chunks
    done = [s for s in streams if s.complete(writes) and len(sent.get(s.completion or "", ())) == writes]
    # While every stream is open: from the last one's first send to the first one's last.
    all_open = max((sent[s.completion or ""][0] for s in done), default=0.0)
    first_end = min((sent[s.completion or ""][-1] for s in done), default=0.0)
    added: list[float] = []
    steady: list[float] = []
    last: list[float] = []
    transit: list[float] = []
    late: list[float] = []
    for stream in done:
        times, seen = sent[stream.completion or ""], stream.arrivals
        gaps = [(seen[k] - seen[k - 1]) - (times[k] - times[k - 1]) for k in range(1, writes)]
        added += gaps
        steady += [g for k, g in enumerate(gaps, 1) if times[k - 1] >= all_open and times[k] <= first_end]
        last.append(gaps[-1])
        transit += [a - t for a, t in zip(seen, times, strict=True)]
        late += [t - (times[0] + k * gap) for k, t in enumerate(times)]
    kept = {id(s) for s in done}
    return {
        "completed": len(done),
        "errors": dict(Counter(s.error or "incomplete" for s in streams if id(s) not in kept)),
        "first_chunks": [s.arrivals[0] for s in done],
        "added_ms": spread(added),
        "added_last_ms": spread(last),
        "added_steady_ms": spread(steady),
        "transit_ms": spread(transit),
        "upstream_late_ms": spread(late),
        "metered": [
            [s.request_id, s.usage["prompt_tokens"], s.usage["completion_tokens"]] for s in done if s.usage
        ],
    }


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    """Open every stream within ``args.ramp`` seconds, read them all to the end."""
    headers = {"Content-Type": "application/json"}
    if key := os.environ.get("BENCH_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    timeout = aiohttp.ClientTimeout(total=args.ramp + args.seconds + 60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        start = time.monotonic()
        streams = await asyncio.gather(
            *(
                _one(http, args.url, headers, start + i * args.ramp / args.streams)
                for i in range(args.streams)
            )
        )
        async with http.get(args.sent) as response:
            sent = await response.json()
    figures = summarise(streams, sent, args)
    first = figures.pop("first_chunks")
    figures["all_open_s"] = round(max(first) - start, 3) if first else None
    figures["driver_cpu_s"] = time.process_time()
    return figures


def drive_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streams drive")
    parser.add_argument("url", help="the chat completions URL to stream from")
    parser.add_argument("--sent", required=True, help="the upstream's URL of this setup's send times")
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--chunks", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--ramp", type=float, required=True)
    args = parser.parse_args(argv)
    raise_fd_limit()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(drive(args))))
    return 0


# The run: targets, measurements, the ledger check.


@dataclass
class Figures:
    """One setup's measurements."""

    setup: str
    streams: int
    completed: int
    errors: dict[str, int]
    relayed_chunks: int
    all_open_s: float | None
    peak_open: int
    added_ms: dict[str, float | None]
    added_last_ms: dict[str, float | None]
    added_steady_ms: dict[str, float | None]
    transit_ms: dict[str, float | None]
    upstream_late_ms: dict[str, float | None]
    harness_cpu_s: float
    rest_cpu_s: float
    listen_overflows: int
    cpu_s: float | None = None
    cpu_us_per_chunk: float | None = None
    idle_rss_mb: float | None = None
    rss_at_peak_mb: float | None = None
    peak_rss_mb: float | None = None
    events: int | None = None
    metered_exactly: int | None = None
    unmetered: int | None = None
    wrong: int | None = None


@dataclass
class Bench:
    """What every setup's run shares."""

    args: argparse.Namespace
    upstream: str
    upstream_pid: int
    workdir: Path


class Sampler:
    """Polls the upstream's count of open streams and the target's RSS until
    stopped, keeping the RSS at the most streams open at once."""

    def __init__(self, upstream: str, name: str, pid: int | None) -> None:
        self._url, self._name, self._pid = f"{upstream}/paced-open", name, pid
        self._stop = asyncio.Event()
        self.peak_open = 0
        self.rss_at_peak: float | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            while not self._stop.is_set():
                self._note(await self._open(http), rss_mb(self._pid) if self._pid else None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.1)

    async def _open(self, http: aiohttp.ClientSession) -> int:
        try:
            async with http.get(self._url) as response:
                return int((await response.json()).get(self._name, 0))
        except aiohttp.ClientError:
            return 0

    def _note(self, open_: int, rss: float | None) -> None:
        if open_ > self.peak_open:
            self.peak_open, self.rss_at_peak = open_, rss
        elif open_ == self.peak_open and rss is not None:
            self.rss_at_peak = max(rss, self.rss_at_peak or 0.0)


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has been busy so far (/proc/stat)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def listen_overflows() -> int:
    """The kernel's count of connections dropped for a full accept queue (all
    sockets of the machine: TcpExt ListenOverflows)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True)).get("ListenOverflows", 0))
    return 0


def paced_base(bench: Bench, name: str) -> str:
    args = bench.args
    return f"{bench.upstream}/{name}/paced/{args.chunks}/{args.seconds:g}/v1"


async def start_target(bench: Bench, name: str, runner: tuple[str, ...] = ()) -> Target:
    """The setup ``name`` serving the paced stream (named by its prefix)."""
    base = paced_base(bench, name)
    if name == "direct":
        return Target(name, base)
    if name.startswith("forwarder"):
        port = free_port()
        loop = ("--uvloop",) if name.endswith("uvloop") else ()
        proc = spawn(PYTHON, "-m", "bench.forwarder", str(port), base, *loop, cwd=HERE.parent)
        target = Target(name, f"http://127.0.0.1:{port}/v1", procs=[proc])
        try:
            await wait_ready(f"http://127.0.0.1:{port}/")
        except BaseException:
            stop(proc)
            raise
        return target
    production = TAXIMETERS[name.replace("profile-", "")]
    return await start_taximeter(name, base, bench.workdir, 1, production, runner)


def _redis_prefix(pid: int) -> str | None:
    """The Redis key prefix a taximeter this run started was given."""
    with contextlib.suppress(OSError):
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(b"TAXIMETER_REDIS_PREFIX="):
                return item.split(b"=", 1)[1].decode()
    return None


async def dispose(target: Target) -> None:
    """Stop the target's processes, drop its database and its Redis keys."""
    prefixes = [p for proc in target.procs if (p := _redis_prefix(proc.pid))]
    for proc in target.procs:
        stop(proc)
    database = getattr(target, "database", None)
    if database:
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()
    for prefix in prefixes:
        client = redis.asyncio.Redis.from_url(REDIS)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


async def run_driver(bench: Bench, target: Target) -> dict[str, Any]:
    """The load generator's figures; it is killed if it overruns."""
    args = bench.args
    command = [
        *(PYTHON, "-m", "bench.streams", "drive", f"{target.url}/chat/completions"),
        *("--sent", f"{bench.upstream}/{target.name}/paced-sent", "--streams", str(args.streams)),
        *("--chunks", str(args.chunks), "--seconds", str(args.seconds), "--ramp", str(args.ramp)),
    ]
    env = {**os.environ, "BENCH_KEY": target.key}
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=HERE.parent, env=env
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), args.ramp + args.seconds + 120)
    finally:
        if proc.returncode is None:
            proc.kill()  # the load generator this run started
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed: {err.decode()[-2000:]}")
    return dict(json.loads(out))


async def ledger_rows(bench: Bench, target: Target) -> list[tuple[str, int, bool, int, int]]:
    """Every event in the target's ledger: request id, status, estimated, tokens in and out."""
    query = "SELECT request_id, status, estimated, input_tokens, output_tokens FROM usage_events"
    database = getattr(target, "database", None)
    if database is None:

        def read() -> list[tuple[str, int, bool, int, int]]:
            with contextlib.closing(sqlite3.connect(bench.workdir / f"{target.name}.db")) as db:
                return [(r, int(s), bool(e), int(i), int(o)) for r, s, e, i, o in db.execute(query)]

        return await asyncio.to_thread(read)
    conn = await asyncpg.connect(f"{PG_ADMIN.rsplit('/', 1)[0]}/{database}")
    try:
        return [(r, int(s), bool(e), int(i), int(o)) for r, s, e, i, o in await conn.fetch(query)]
    finally:
        await conn.close()


def metering(expected: list[list[Any]], rows: list[tuple[str, int, bool, int, int]]) -> dict[str, int]:
    """Streams metered exactly (one event, status 200, not estimated, the
    usage chunk's counts), with none, or otherwise (doubled or wrong)."""
    counts = Counter(row[0] for row in rows)
    found = {row[0]: row[1:] for row in rows}
    exact = unmetered = 0
    for request_id, prompt, completion in expected:
        if counts[request_id] == 0:
            unmetered += 1
        elif counts[request_id] == 1 and found[request_id] == (200, False, prompt, completion):
            exact += 1
    return {
        "events": len(rows),
        "metered_exactly": exact,
        "unmetered": unmetered,
        "wrong": len(expected) - exact - unmetered,
    }


@dataclass
class Counters:
    """CPU seconds of the target, of the upstream and of the whole machine,
    and the kernel's listen queue overflows, at one moment."""

    target: float
    upstream: float
    machine: float
    overflows: int

    @classmethod
    def now(cls, pid: int | None, upstream_pid: int) -> Counters:
        target = cpu_seconds(pid) if pid else 0.0
        return cls(target, cpu_seconds(upstream_pid), machine_busy_s(), listen_overflows())

    def since(self, before: Counters) -> Counters:
        return Counters(
            self.target - before.target,
            self.upstream - before.upstream,
            self.machine - before.machine,
            self.overflows - before.overflows,
        )


async def load(bench: Bench, target: Target) -> tuple[Figures, dict[str, Any]]:
    """Drive the streams through ``target``; its figures and the driver's output."""
    pid = target.procs[0].pid if target.procs else None
    idle = rss_mb(pid) if pid else None
    before = Counters.now(pid, bench.upstream_pid)
    sampler = Sampler(bench.upstream, target.name, pid)
    sampling = asyncio.create_task(sampler.run())
    try:
        out = await run_driver(bench, target)
    finally:
        sampler.stop()
        await sampling
    await check_ledger(target, bench.upstream)  # taximeter: settled, as many events as upstream calls
    used = Counters.now(pid, bench.upstream_pid).since(before)
    figures = _figures(bench, target.name, out, used, sampler)
    if pid:
        relayed = figures.relayed_chunks
        figures.cpu_s = round(used.target, 2)
        figures.cpu_us_per_chunk = round(1e6 * used.target / relayed, 2) if relayed else None
        figures.idle_rss_mb = round(idle or 0.0, 1)
        figures.rss_at_peak_mb = None if sampler.rss_at_peak is None else round(sampler.rss_at_peak, 1)
        figures.peak_rss_mb = round(peak_rss_mb(pid), 1)
    return figures, out


def _figures(bench: Bench, name: str, out: dict[str, Any], used: Counters, sampler: Sampler) -> Figures:
    """What every setup has: the driver's figures, the open streams, the machine's load."""
    harness = used.upstream + out["driver_cpu_s"]
    return Figures(
        setup=name,
        streams=bench.args.streams,
        completed=out["completed"],
        errors=out["errors"],
        relayed_chunks=out["completed"] * (bench.args.chunks + 1),
        all_open_s=out["all_open_s"],
        peak_open=sampler.peak_open,
        added_ms=out["added_ms"],
        added_last_ms=out["added_last_ms"],
        added_steady_ms=out["added_steady_ms"],
        transit_ms=out["transit_ms"],
        upstream_late_ms=out["upstream_late_ms"],
        harness_cpu_s=round(harness, 2),
        rest_cpu_s=round(used.machine - harness - used.target, 2),
        listen_overflows=used.overflows,
    )


async def measure(bench: Bench, name: str) -> Figures:
    """One setup, in fresh processes, stopped (and its data dropped) after."""
    target = await start_target(bench, name)
    try:
        figures, out = await load(bench, target)
        if target.count_events is not None:
            rows = await ledger_rows(bench, target)
            for key, value in metering(out["metered"], rows).items():
                setattr(figures, key, value)
        return figures
    finally:
        await dispose(target)


# cProfile of a taximeter setup under the same load.


def _where(filename: str) -> str:
    """Taximeter's own file, an installed package, asyncio, builtins or the rest."""
    if filename.startswith("~") or "<" in filename:
        return "builtins (C functions)"
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    root = str(HERE.parent) + "/"
    if filename.startswith(root) and "/bench/" not in filename:
        return "taximeter " + filename.removeprefix(root)
    return "asyncio" if "/asyncio/" in filename else "stdlib and other"


def profile_tables(path: Path, chunks: int, streams: int, top: int) -> list[str]:
    """Own time by module and the ``top`` functions, per relayed chunk."""
    by_where: dict[str, float] = defaultdict(float)
    rows = []
    for filename, line, func, calls, own, cumulative in profiled(path):
        by_where[_where(filename)] += own
        if calls >= streams:  # at least once a stream: start-up and shutdown left out
            rows.append((own, calls, cumulative, f"{Path(filename).name}:{line}({func})", _where(filename)))
    total = sum(by_where.values()) or 1.0
    out = ["| where | own time | share | µs per chunk |", "| --- | ---: | ---: | ---: |"]
    for where, own in sorted(by_where.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"| {where} | {own:.2f} s | {own / total:.1%} | {1e6 * own / chunks:.1f} |")
    out += [
        "",
        f"The {top} functions with the most time of their own (share of all profiled time):",
        "",
        "| function | calls per chunk | own µs per chunk | share | cumulative µs per chunk |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for own, calls, cumulative, name, where in sorted(rows, reverse=True)[:top]:
        out.append(
            f"| `{name}` ({where}) | {calls / chunks:.2f} | {1e6 * own / chunks:.1f} | {own / total:.1%} "
            f"| {1e6 * cumulative / chunks:.1f} |"
        )
    return out


async def profile(bench: Bench, setup: str) -> list[str]:
    """The Markdown of ``setup`` run under cProfile with the same load."""
    out = bench.workdir / f"{setup}.prof"
    runner = (PYTHON, "-m", "cProfile", "-o", str(out))
    target = await start_target(bench, f"profile-{setup}", runner)
    try:
        figures, _ = await load(bench, target)
    finally:
        await dispose(target)  # SIGTERM: serve exits cleanly and cProfile writes its file
    chunks = max(figures.relayed_chunks, 1)
    return [
        f"### `{setup}` under cProfile",
        "",
        f"The same load ({figures.completed:,} streams completed, {chunks:,} chunks relayed) on a fresh "
        "process run by `python -m cProfile` (which slows it several times: what matters is the "
        "share). Own time by module (taximeter's own files one by one; start-up included):",
        "",
        *profile_tables(out, chunks, bench.args.streams, bench.args.top),
        "",
    ]


async def benchmark(args: argparse.Namespace) -> tuple[list[Figures], dict[str, list[str]]]:
    """Every setup's figures, and the profiles of the taximeter setups asked for."""
    workdir = Path(tempfile.mkdtemp(prefix="taximeter-streams-"))
    port = free_port()
    upstream = spawn(PYTHON, "-m", "bench.upstream", str(port), "--uvloop", cwd=HERE.parent)
    try:
        async with asyncio.timeout(args.timeout):
            bench = Bench(args, f"http://127.0.0.1:{port}", upstream.pid, workdir)
            await wait_ready(f"{bench.upstream}/served")
            figures = [await measure(bench, name) for name in args.setups]
            profiles = {}
            for setup in to_profile(args, figures):
                profiles[setup] = await profile(bench, setup)
            return figures, profiles
    finally:
        stop(upstream)
        shutil.rmtree(workdir, ignore_errors=True)


def to_profile(args: argparse.Namespace, figures: list[Figures]) -> list[str]:
    """The taximeter setups to profile: those asked for, or with ``auto``
    those that missed the CPU target."""
    if args.profile != ["auto"]:
        return [p for p in args.profile if p in TAXIMETERS]
    return [j["setup"] for j in judge(figures) if j["target"] == "cpu" and j["met"] is False]


# The targets and the report.


def judge(figures: list[Figures]) -> list[dict[str, Any]]:
    """Each taximeter setup against each target (``met`` None: not measurable)."""
    base = next((f for f in figures if f.setup == BASELINE), None)
    out = []
    for f in figures:
        if f.setup not in TAXIMETERS:
            continue
        ratio = _ratio(f.cpu_us_per_chunk, base.cpu_us_per_chunk if base else None)
        over = _minus(rss_when_all_open(f), rss_when_all_open(base) if base else None)
        bad = None if f.metered_exactly is None else f.completed - f.metered_exactly
        estimated = f.peak_open < f.streams or (base is not None and base.peak_open < base.streams)
        out += [
            _verdict(f.setup, "cpu", ratio, CPU_RATIO),
            _verdict(f.setup, "rss", over, RSS_OVER_MB) | {"estimated": estimated},
            _verdict(f.setup, "delay", f.added_ms["p99"], DELAY_P99_MS),
            _verdict(f.setup, "unmetered", bad, 0),
        ]
    return out


def rss_per_stream_kb(f: Figures) -> float | None:
    """Resident memory per open stream: RSS at the peak over idle, per stream then open."""
    if f.rss_at_peak_mb is None or f.idle_rss_mb is None or not f.peak_open:
        return None
    return round(1024 * (f.rss_at_peak_mb - f.idle_rss_mb) / f.peak_open, 1)


def rss_when_all_open(f: Figures) -> float | None:
    """RSS with every stream open: measured, or (when fewer were open at
    once) idle RSS plus the measured RSS per open stream times all of them."""
    per_stream = rss_per_stream_kb(f)
    if f.peak_open >= f.streams or per_stream is None or f.idle_rss_mb is None:
        return f.rss_at_peak_mb
    return round(f.idle_rss_mb + per_stream * f.streams / 1024, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


def _verdict(setup: str, target: str, value: float | None, limit: float) -> dict[str, Any]:
    met = None if value is None else value <= limit
    return {"setup": setup, "target": target, "value": value, "limit": limit, "met": met}


_TARGETS = {
    "cpu": ("CPU per relayed chunk, × the uvloop forwarder's", "≤ {:g}×", "{:.2f}×"),
    "rss": ("RSS with every stream open, MB over the uvloop forwarder's", "≤ +{:g} MB", "{:+.1f} MB"),
    "delay": ("added inter-chunk delay p99", "≤ {:g} ms", "{:.2f} ms"),
    "unmetered": ("completed streams not metered exactly", "{:g}", "{:.0f}"),
}


def _fmt(value: Any, pattern: str = "{:,.1f}") -> str:
    return "–" if value is None else pattern.format(value)


def _row(label: str, figures: list[Figures], cell: Any) -> str:
    return f"| {label} | " + " | ".join(cell(f) for f in figures) + " |"


def figures_table(figures: list[Figures]) -> list[str]:
    base = next((f for f in figures if f.setup == BASELINE), None)
    b_cpu = base.cpu_us_per_chunk if base else None
    b_rss = base.rss_at_peak_mb if base else None
    return [
        "| | " + " | ".join(f"`{f.setup}`" for f in figures) + " |",
        "| --- |" + " ---: |" * len(figures),
        _row("streams completed", figures, lambda f: f"{f.completed:,} / {f.streams:,}"),
        _row("streams failed, by error", figures, lambda f: _errors(f.errors)),
        _row("all streams open after (s)", figures, lambda f: _fmt(f.all_open_s, "{:.2f}")),
        _row("most streams open at once", figures, lambda f: f"{f.peak_open:,}"),
        _row("chunks relayed", figures, lambda f: f"{f.relayed_chunks:,}"),
        _row("CPU of the target (s)", figures, lambda f: _fmt(f.cpu_s, "{:.2f}")),
        _row("**CPU per relayed chunk (µs)**", figures, lambda f: _fmt(f.cpu_us_per_chunk)),
        _row(
            "× the uvloop forwarder's", figures, lambda f: _fmt(_ratio(f.cpu_us_per_chunk, b_cpu), "{:.2f}×")
        ),
        _row("RSS idle (MB)", figures, lambda f: _fmt(f.idle_rss_mb)),
        _row("**RSS at peak open streams (MB)**", figures, lambda f: _fmt(f.rss_at_peak_mb)),
        _row(
            "over the uvloop forwarder's", figures, lambda f: _fmt(_minus(f.rss_at_peak_mb, b_rss), "{:+.1f}")
        ),
        _row("RSS per open stream (KB)", figures, lambda f: _fmt(rss_per_stream_kb(f))),
        _row("peak RSS, VmHWM (MB)", figures, lambda f: _fmt(f.peak_rss_mb)),
        _row("added inter-chunk delay p50 (ms)", figures, lambda f: _fmt(f.added_ms["p50"], "{:.2f}")),
        _row("**added inter-chunk delay p99 (ms)**", figures, lambda f: _fmt(f.added_ms["p99"], "{:.2f}")),
        _row("added inter-chunk delay max (ms)", figures, lambda f: _fmt(f.added_ms["max"], "{:.1f}")),
        _row(
            "added delay of the last write alone (usage, `[DONE]`) p50 / p99 (ms)",
            figures,
            lambda f: _pair(f.added_last_ms),
        ),
        _row(
            "added delay while every stream was open p50 / p99 (ms)",
            figures,
            lambda f: _pair(f.added_steady_ms),
        ),
        _row("upstream → client p50 / p99 (ms)", figures, lambda f: _pair(f.transit_ms)),
        _row(
            "upstream's own lateness p99 (ms)", figures, lambda f: _fmt(f.upstream_late_ms["p99"], "{:.2f}")
        ),
        _row("harness CPU: upstream + load generator (s)", figures, lambda f: f"{f.harness_cpu_s:.2f}"),
        _row(
            "the rest of the machine: Postgres, Redis, other work (CPU s)",
            figures,
            lambda f: f"{f.rest_cpu_s:.2f}",
        ),
        _row("listen queue overflows (whole machine)", figures, lambda f: f"{f.listen_overflows:,}"),
        _row("ledger events", figures, lambda f: _fmt(f.events, "{:,}")),
        _row("**streams metered exactly**", figures, lambda f: _fmt(f.metered_exactly, "{:,}")),
        _row("unmetered / metered wrong", figures, lambda f: _metering_faults(f)),
    ]


def _errors(errors: dict[str, int]) -> str:
    return "; ".join(f"{n} × {e}" for e, n in errors.items()) or "–"


def _pair(spread_ms: dict[str, float | None]) -> str:
    return f"{_fmt(spread_ms['p50'], '{:.2f}')} / {_fmt(spread_ms['p99'], '{:.2f}')}"


def _metering_faults(f: Figures) -> str:
    return "–" if f.unmetered is None else f"{f.unmetered} / {f.wrong}"


def targets_table(verdicts: list[dict[str, Any]]) -> list[str]:
    out = ["| setup | target | limit | measured | |", "| --- | --- | ---: | ---: | --- |"]
    for v in verdicts:
        label, limit, value = _TARGETS[v["target"]]
        state = {True: "met", False: "**missed**", None: "not measured"}[v["met"]]
        if v["met"] is False:
            state += " by " + _excess(v["target"], v["value"], v["limit"])
        if v.get("estimated"):
            state += " (estimated: fewer streams were open at once, see RSS per open stream)"
        out.append(
            f"| `{v['setup']}` | {label} | {limit.format(v['limit'])} | {_fmt(v['value'], value)} | {state} |"
        )
    return out


def _excess(target: str, value: float, limit: float) -> str:
    if target == "cpu":
        return f"{value - limit:.2f}× ({value / limit - 1:.0%} over the limit)"
    if target == "unmetered":
        return f"{value:.0f} streams"
    return f"{value - limit:.1f} {'MB' if target == 'rss' else 'ms'}"


_METHOD = """\
How it is measured:

- **Streams.** Each is a chat completion asked for with `stream: true` and
  `stream_options.include_usage`; the upstream sends {chunks} chunks at
  {gap:g} ms intervals (each at its own time from the stream's start, so a late
  one does not push the rest back), then one last write a gap later with the
  finish chunk, the usage chunk (its own prompt token count per stream) and
  `data: [DONE]`: {writes} writes a stream. The load generator opens stream *i*
  at *i* × {ramp:g} s / {streams:,} and reads every stream to its end.
- **CPU per relayed chunk**: the user + system CPU of the target's process
  tree (/proc) from before the first stream to the last event settled,
  divided by the upstream writes relayed ({writes} per completed stream), so
  each stream's admission, settlement and ledger write are in it too.
- **RSS at peak open streams**: the target's resident memory, sampled every
  0.1 s with the upstream's count of open streams; the RSS at the largest
  count. Peak RSS is the kernel's high-water mark (VmHWM). RSS per open
  stream is the RSS at the peak over the idle RSS, per stream then open; when
  a setup never had every stream open at once, the RSS target uses idle RSS
  plus that per-stream figure times all the streams (marked estimated).
- **Listen queue overflows**: the kernel's count (whole machine, during the
  run) of connections dropped because the target's accept queue was full; a
  dropped connection is retried by the client's kernel 1, 3, 7, 15, 31 s
  later, which is what makes streams open late.
- **Added inter-chunk delay**: for every pair of consecutive writes of a
  stream, the gap between their arrivals at the client minus the gap between
  their sends at the upstream (both `time.monotonic`, one clock for the whole
  machine). So the upstream's own lateness is left out and only what happens
  between its socket and the client's read counts; `direct` (the client
  reading the upstream itself) shows what the harness adds alone. It is also
  shown for the gaps while every stream was open (between the last stream's
  first send and the first stream's last), leaving out the opening rush. The last
  write's gap is also shown alone: taximeter settles the call before the
  usage chunk and `[DONE]` go on to the client. Upstream → client is each
  write's arrival minus its send.
- **Metered exactly**: the ledger (SQLite or Postgres, read after the run) has
  exactly one event for each completed stream's `X-Taximeter-Request-Id`,
  status 200, not estimated, with the prompt and completion tokens of the
  usage chunk that stream received; and as many events as calls the upstream
  served (a stream that failed before reaching the upstream costs nothing).
"""


def report(args: argparse.Namespace, figures: list[Figures], profiles: dict[str, list[str]]) -> str:
    """The whole report; with ``args.append`` only the run's own section."""
    command = (
        f"`python -m bench.streams --streams {args.streams} --chunks {args.chunks} --seconds {args.seconds:g} "
        f"--ramp {args.ramp:g}`: {args.streams:,} concurrent streams of {args.chunks} chunks over "
        f"{args.seconds:g} s each, opened within {args.ramp:g} s, through each setup in turn."
    )
    head = "###" if args.append else "##"
    lines = [
        *(
            ["", f"## Also: {args.streams:,} streams of {args.chunks} chunks over {args.seconds:g} s"]
            if args.append
            else []
        ),
        *([] if args.append else [f"# Many slow streams at once ({datetime.now(UTC):%Y-%m-%d})"]),
        "",
        command,
        "",
        *([] if args.append else _preamble(args)),
        f"{head} Figures",
        "",
        *figures_table(figures),
        "",
        f"{head} Targets",
        "",
        *targets_table(judge(figures)),
        "",
    ]
    if profiles:
        lines += [f"{head} Profile", ""] + [line for p in profiles.values() for line in p]
    return "\n".join(lines)


def _preamble(args: argparse.Namespace) -> list[str]:
    return [
        f"Machine: {machine()}. Everything (the fake upstream, the load generator and the "
        "target, and Postgres and Redis) runs on this machine and shares its cores, and other "
        "work may run beside it: the CPU the rest of the machine used during each run is in the "
        "table. The upstream and the load generator run on uvloop. Open files allowed: "
        f"{raise_fd_limit():,}.",
        "",
        _METHOD.format(
            chunks=args.chunks,
            gap=1000 * args.seconds / args.chunks,
            writes=args.chunks + 1,
            ramp=args.ramp,
            streams=args.streams,
        ),
    ]


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000, help="streams open at once")
    parser.add_argument("--chunks", type=int, default=100, help="chunks in each stream")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each stream lasts")
    parser.add_argument("--ramp", type=float, default=1.5, help="seconds over which the streams are opened")
    parser.add_argument(
        "--setups",
        type=lambda s: s.split(","),
        default=list(SETUPS),
        help=f"comma-separated, of {','.join(SETUPS)}",
    )
    parser.add_argument(
        "--profile",
        type=lambda s: s.split(","),
        default=["auto"],
        help="taximeter setups to run once more under cProfile: auto (those over the CPU target), none, or names",
    )
    parser.add_argument("--top", type=int, default=15, help="rows in the profile's tables")
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the whole run")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    parser.add_argument(
        "--append", action="store_true", help="add this run's figures to the end of --out as a section"
    )
    parser.add_argument("--smoke", action="store_true", help="20 streams of 10 chunks over 1 s, no profile")
    args = parser.parse_args(argv)
    if args.smoke:
        args.streams, args.chunks, args.seconds, args.ramp, args.profile = 20, 10, 1.0, 0.2, ["none"]
    unknown = set(args.setups) - set(SETUPS)
    if unknown:
        parser.error(f"unknown setups: {', '.join(sorted(unknown))}")
    if args.timeout is None:
        runs = len(args.setups) + len(TAXIMETERS)  # the profiles at most
        args.timeout = runs * (args.ramp + args.seconds + 120) + 60
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["drive"]:
        return drive_main(argv[1:])
    args = parse(argv)
    raise_fd_limit()  # inherited by every process started here
    figures, profiles = asyncio.run(benchmark(args))
    if args.out is not None:
        with args.out.open("a" if args.append else "w") as out:
            out.write(report(args, figures, profiles))
    print(json.dumps({"figures": [asdict(f) for f in figures], "targets": judge(figures)}))
    # A stream the target could not take is a figure; a stream metered wrong is a failure.
    return 0 if all(f.metered_exactly == f.completed for f in figures if f.setup in TAXIMETERS) else 1


if __name__ == "__main__":
    sys.exit(main())
