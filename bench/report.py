"""bench/REPORT.md and bench/results.jsonl from one run."""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import Result, machine


def _median(results: list[Result], attr: str) -> float | None:
    values = [getattr(r, attr) for r in results if getattr(r, attr) is not None]
    return statistics.median(values) if values else None


def summarise(results: list[Result]) -> dict[tuple[str, int, str], dict[str, Any]]:
    grouped: dict[tuple[str, int, str], list[Result]] = defaultdict(list)
    for r in results:
        grouped[(r.mode, r.concurrency, r.target)].append(r)
    return {
        key: {
            attr: _median(rs, attr)
            for attr in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "rss_mb", "ttfb_ms")
        }
        | {"requests": sum(r.requests for r in rs), "ok": sum(r.ok for r in rs)}
        for key, rs in grouped.items()
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def write_report(
    results: list[Result], memory: list[dict[str, Any]], args: argparse.Namespace, out: Path
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps(asdict(r)) + "\n")
        for m in memory:
            f.write(json.dumps({"memory": m}) + "\n")
    summary = summarise(results)
    targets = list(dict.fromkeys(r.target for r in results))
    lines = [
        "# taximeter benchmark",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        f"{args.rounds} round(s), {args.duration:g} s of `wrk` load per target, mode and concurrency, targets",
        "interleaved round by round; figures are medians over rounds. Every call is a POST of a small",
        "`gpt-4o-mini` chat (max_tokens 16); taximeter runs with a budget in mode `both` (every call",
        "admitted by reservation and settled), and after each run the ledger was checked to hold exactly",
        "one event per successful call. Ratios are to the direct call (`direct`) and to a bare aiohttp",
        "forwarder (`forwarder`) measured in the same run. The forwarder runs on asyncio's own loop, as",
        "a plain aiohttp app does; taximeter on uvloop. Everything shares the machine's cores: `wrk`, the",
        "upstream, Postgres and Redis load them as much as the target does, so a second worker only",
        "scales where cores are free.",
        "",
    ]
    for mode in ("chat", "stream"):
        for concurrency in args.concurrency:
            base = summary.get((mode, concurrency, "direct"))
            floor = summary.get((mode, concurrency, "forwarder"))
            if base is None:
                continue
            lines += [
                f"## {mode}, concurrency {concurrency}",
                "",
                "| target | req/s | ×direct | ×forwarder | p50 ms | +p50 vs direct | p99 ms | CPU ms/req | peak RSS MB |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for target in targets:
                s = summary.get((mode, concurrency, target))
                if s is None:
                    continue
                lines.append(
                    f"| {target} | {_fmt(s['rps'], 0)} | {_fmt(s['rps'] / base['rps'])} | "
                    f"{_fmt(s['rps'] / floor['rps']) if floor else '—'} | {_fmt(s['p50_ms'], 3)} | "
                    f"{_fmt(s['p50_ms'] - base['p50_ms'], 3)} | {_fmt(s['p99_ms'], 3)} | "
                    f"{_fmt(s['cpu_ms_per_request'], 3)} | {_fmt(s['rss_mb'], 1)} |"
                )
            if mode == "stream" and concurrency == 1:
                lines += ["", "Time to first byte of a stream (median ms):", ""]
                for target in targets:
                    s = summary.get((mode, concurrency, target))
                    if s and s["ttfb_ms"] is not None:
                        lines.append(
                            f"- {target}: {_fmt(s['ttfb_ms'], 3)} (+{_fmt(s['ttfb_ms'] - base['ttfb_ms'], 3)} vs direct)"
                        )
            lines.append("")
    lines += _memory(memory)
    lines += _targets(summary, memory)
    profile = out / "PROFILE.md"  # written by python -m bench.profile
    if profile.exists():
        lines += ["", *profile.read_text().splitlines()]
    lines += scale_scenarios(out)
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")


# The scenarios each run alone (python -m bench.NAME), whose reports this one lists.
SCENARIOS = {
    "TENANTS.md": "10,000 tenants: sweeper per tick, overview, admission (`python -m bench.tenants`)",
    "LEDGER.md": "10 million events: reports, dashboard, CSV export, writes (`python -m bench.ledger`)",
    "STREAMS.md": "2,000 slow streams: CPU per chunk, memory, delay, metering (`python -m bench.streams`)",
    "PEERS.md": "LiteLLM and Portkey in the same run (`python -m bench.peers`)",
}


def scale_scenarios(out: Path) -> list[str]:
    """A section naming each scale scenario's latest report, with its own first lines."""
    lines = ["", "## Scale scenarios", ""]
    for name, what in SCENARIOS.items():
        report = out / name
        shown = f"[{name}]({name})" if report.exists() else f"{name} (not run yet)"
        lines.append(f"- {what}: {shown}")
    return lines


def _memory(memory: list[dict[str, Any]]) -> list[str]:
    if not memory:
        return []
    out = [
        "## Memory",
        "",
        "Resident memory of a fresh `taximeter` (1 worker, budgets on), embedded and on Postgres + Redis, "
        "driven at concurrency 16, after a number of calls:",
        "",
    ]
    out += [f"- {m['target']}, after {m['requests']:,} calls: {m['rss_mb']:.1f} MB" for m in memory]
    return [*out, ""]


def _targets(summary: dict[tuple[str, int, str], dict[str, Any]], memory: list[dict[str, Any]]) -> list[str]:
    def get(mode: str, c: int, target: str, attr: str) -> float | None:
        s = summary.get((mode, c, target))
        return None if s is None else s[attr]

    out = ["## Targets", ""]
    rps, floor = get("chat", 64, "taximeter-pg-redis", "rps"), get("chat", 64, "forwarder", "rps")
    if rps and floor:
        out.append(
            f"- Non-streaming, c=64, Postgres + Redis, budgets on: {rps / floor:.0%} of the forwarder's "
            f"throughput (target ≥ 50%)."
        )
    p50, base = get("chat", 1, "taximeter-pg-redis", "p50_ms"), get("chat", 1, "direct", "p50_ms")
    if p50 is not None and base is not None:
        out.append(f"- c=1 added p50 over the direct call: {p50 - base:.3f} ms (target ≤ 1.0 ms).")
    ttfb, ttfb_base = get("stream", 1, "taximeter-pg-redis", "ttfb_ms"), get("stream", 1, "direct", "ttfb_ms")
    if ttfb is not None and ttfb_base is not None:
        out.append(f"- Streaming time to first byte added: {ttfb - ttfb_base:.3f} ms (target ≤ 1.0 ms).")
    one, two = get("chat", 64, "taximeter-pg-redis", "rps"), get("chat", 64, "taximeter-pg-redis-2w", "rps")
    if one and two:
        out.append(
            f"- Two workers: {two / one:.2f}× one worker's throughput (target ≥ 1.6× where there are the cores)."
        )
    for target in dict.fromkeys(m["target"] for m in memory):
        first, *_, last = [m for m in memory if m["target"] == target]
        out.append(
            f"- RSS of {target} after {last['requests']:,} calls: {last['rss_mb']:.1f} MB, "
            f"{last['rss_mb'] / first['rss_mb'] - 1:+.1%} of its {first['rss_mb']:.1f} MB after "
            f"{first['requests']:,} (target within 10%)."
        )
    out.append("- Lost or doubled events: 0 (checked after every run; the run stops on any mismatch).")
    return out
