"""Where taximeter's time goes: one configuration under cProfile and wrk.

    python -m bench.profile [--config pg-redis] [--mode chat] [--concurrency 16] [--duration 10]

Writes bench/PROFILE.md (the report includes it): the functions with the most
time of their own, and the time by package, so a change to the hot path can be
judged by what it removes. Everything runs on 127.0.0.1 and only processes
started here are stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import shutil
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from bench.run import (
    CHAT,
    CONFIGS,
    HERE,
    PYTHON,
    STREAM,
    check_ledger,
    drop_database,
    free_port,
    run_wrk,
    spawn,
    start_taximeter,
    stop,
    wait_ready,
)

# Where a function's file lives -> what the summary calls it.
_PACKAGES = {
    "/aiohttp/": "aiohttp",
    "/redis/": "redis",
    "/asyncpg/": "asyncpg",
    "/aiosqlite/": "aiosqlite",
    "/prometheus_client/": "prometheus_client",
    "/yarl/": "yarl",
    "/multidict/": "multidict",
    "/logging/": "logging",
    "/json/": "json",
    "/dataclasses.py": "dataclasses",
    "/copy.py": "dataclasses",  # asdict deep-copies
    "/asyncio/": "event loop",
    "/uvloop/": "event loop",
}


_PROJECT = str(HERE.parent)


def _package(filename: str) -> str:
    inside = filename.startswith(_PROJECT) and "/site-packages/" not in filename  # not a venv in the checkout
    if inside and "/bench/" not in filename:
        return "taximeter"  # an editable install runs the files of the checkout
    for needle, name in _PACKAGES.items():
        if needle in filename:
            return name
    if filename.startswith("~") or "<" in filename:
        return "builtins"
    return "stdlib and other"


def profiled(profile: Path) -> Iterator[tuple[str, int, str, int, float, float]]:
    """Each function cProfile timed: file, line, name, calls, own and cumulative seconds."""
    stats = pstats.Stats(str(profile))
    for (filename, line, func), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if own > cumulative + 1e-3:
            continue  # cProfile's own time of an async generator that ran for the whole run: not real
        yield filename, line, func, calls, own, cumulative


def summarise(profile: Path, requests: int, top: int = 25) -> list[str]:
    by_package: dict[str, float] = defaultdict(float)
    rows = []
    for filename, line, func, ncalls, tottime, cumtime in profiled(profile):
        by_package[_package(filename)] += tottime
        rows.append((tottime, ncalls, cumtime, f"{Path(filename).name}:{line}({func})", filename))
    total = sum(by_package.values()) or 1.0
    out = [
        "| package | own time | share | µs per request |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, seconds in sorted(by_package.items(), key=lambda kv: -kv[1]):
        out.append(f"| {name} | {seconds:.2f} s | {seconds / total:.0%} | {1e6 * seconds / requests:.0f} |")
    out += [
        "",
        f"The {top} functions with the most time of their own (a coroutine counts a call "
        "each time it resumes):",
        "",
        "| function | calls per request | own µs per request | cumulative µs per request |",
        "| --- | ---: | ---: | ---: |",
    ]
    # Start-up and shutdown (well under one call per hundred requests) are left out of this table.
    per_request = [row for row in rows if row[1] / requests >= 0.01]
    for tottime, ncalls, cumtime, name, filename in sorted(per_request, reverse=True)[:top]:
        where = _package(filename)
        out.append(
            f"| `{name}` ({where}) | {ncalls / requests:.2f} | {1e6 * tottime / requests:.1f} | "
            f"{1e6 * cumtime / requests:.1f} |"
        )
    return out


async def profile(args: argparse.Namespace) -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="taximeter-profile-"))
    name, _workers, production, limits = CONFIGS[args.config]
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    out = workdir / "serve.prof"
    procs = [spawn(PYTHON, "-m", "bench.upstream", str(port), cwd=HERE.parent)]
    target = None
    try:
        await wait_ready(f"{upstream}/served")
        runner = (PYTHON, "-m", "cProfile", "-o", str(out))
        target = await start_taximeter(
            name, f"{upstream}/{name}/v1", workdir, 1, production, runner, limits=limits
        )
        body = STREAM if args.mode == "stream" else CHAT
        stats = await asyncio.to_thread(run_wrk, target, body, args.concurrency, args.duration)
        await check_ledger(target, upstream)
        for proc in target.procs:
            stop(proc)  # SIGTERM: serve exits cleanly and cProfile writes its file
        requests = int(stats["requests"])
        if args.save_prof is not None:
            shutil.copy(out, args.save_prof)  # for pstats or snakeviz
        header = [
            "## Profile",
            "",
            f"cProfile of `{name}` (1 worker) under `wrk`, {args.mode}, concurrency {args.concurrency}, "
            f"{args.duration:g} s: {requests:,} requests (profiling slows everything down several times; "
            "what matters is the share). Own time by package:",
            "",
        ]
        return header + summarise(out, max(requests, 1), args.top)
    finally:
        for proc in procs + (target.procs if target else []):
            stop(proc)
        if target is not None:
            await drop_database(getattr(target, "database", None))
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--config", choices=["embedded", "pg-redis", "pg-redis-limits"], default="pg-redis")
    parser.add_argument("--mode", choices=["chat", "stream"], default="chat")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=HERE / "PROFILE.md")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save-prof", type=Path, default=None, help="keep the raw cProfile file here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.profile: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    lines = asyncio.run(profile(args))
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
