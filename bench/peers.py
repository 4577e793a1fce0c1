"""taximeter beside its peers: ``python -m bench.peers [--out bench/PEERS.md]``.

Installing the peers is a step of its own, never part of a run nor of the tests:

    python -m bench.peers --install [--peers-dir DIR]

puts LiteLLM's proxy in DIR/litellm-venv (a virtualenv of its own) and
Portkey's gateway in DIR/portkey (npm). A run finds them there and measures,
against one fake upstream, the direct call, the bare forwarder, taximeter on
Postgres + Redis with a budget, and each installed peer in its cheapest
configuration (the report says which peers were not installed): chat calls at
each concurrency, rounds interleaved. Every target's answers must all be 2xx
and each must have reached the upstream; taximeter's ledger is checked exact.
Everything listens on 127.0.0.1; only processes started here are stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.run import (
    CHAT,
    HERE,
    PYTHON,
    Result,
    Target,
    check_ledger,
    cpu_seconds,
    drop_database,
    free_port,
    machine,
    peak_rss_mb,
    result_fields,
    run_wrk,
    served,
    spawn,
    start_taximeter,
    stop,
    wait_ready,
)

DEFAULT_DIR = Path.home() / ".cache" / "taximeter-bench-peers"
# 1.106.12: the newest release whose proxy extra resolves from the registry here
# (1.107 was withdrawn; later ones need litellm-proxy-extras builds not published).
LITELLM = "litellm[proxy]==1.106.12"
PORTKEY = "@portkey-ai/gateway@1.15.2"
TAXIMETER_NAME = "taximeter-pg-redis"
START_TIMEOUT_S = 120.0
WARM_UP_CALLS = 20

# LiteLLM's cheapest proxy: one model, no database, no callbacks; a master key
# is required to start, and wrk sends it.
_LITELLM_CONFIG = """\
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {api_base}
      api_key: sk-bench
general_settings:
  master_key: {master_key}
"""
# Portkey's gateway has no host flag: this preload makes its server listen on 127.0.0.1.
_LOOPBACK_JS = """\
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && typeof args[1] !== "string") {
    args.splice(1, args[1] === undefined ? 1 : 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
"""


class PeerFailed(Exception):
    """A peer would not start or did not answer every call with a 2xx from the upstream."""


@dataclass
class Peer(Target):
    """A target started here in a process group of its own, with extra request headers."""

    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class PeerStatus:
    name: str
    product: str
    installed: bool
    version: str | None = None
    status: str = "not installed"
    configuration: str = ""


@dataclass
class PeerResult(Result):
    upstream_calls: int = 0  # calls the upstream served for this target during the run


# --- install -------------------------------------------------------------------------------


def _du_mb(path: Path) -> float:
    """Disk used under ``path``, in MB."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def _timed(name: str, path: Path, *commands: list[str]) -> dict[str, object]:
    """Run ``commands`` in turn; the seconds they took and the size of ``path``."""
    started = time.monotonic()
    for command in commands:
        subprocess.run(command, check=True, timeout=1800)
    return {"install": name, "seconds": round(time.monotonic() - started, 1), "mb": round(_du_mb(path), 1)}


def install(peers_dir: Path) -> list[dict[str, object]]:
    """LiteLLM's proxy in its own virtualenv and Portkey's gateway from npm."""
    peers_dir.mkdir(parents=True, exist_ok=True)
    venv, portkey = peers_dir / "litellm-venv", peers_dir / "portkey"
    portkey.mkdir(exist_ok=True)
    return [
        _timed(
            "litellm",
            venv,
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", LITELLM],
        ),
        _timed(
            "portkey",
            portkey,
            ["npm", "install", "--prefix", str(portkey), "--no-audit", "--no-fund", PORTKEY],
        ),
    ]


# --- finding the peers ---------------------------------------------------------------------


def _portkey_entry(peers_dir: Path) -> Path:
    return peers_dir / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def litellm_status(peers_dir: Path) -> PeerStatus:
    """Whether LiteLLM's proxy is installed under ``peers_dir``, and its version."""
    venv = peers_dir / "litellm-venv"
    status = PeerStatus("litellm", "LiteLLM proxy", (venv / "bin" / "litellm").exists())
    status.configuration = (
        "`litellm --config` with one model (`openai/gpt-4o-mini` at the fake upstream), "
        "`--num_workers 1` (uvicorn), a master key (sent by wrk), no database, no callbacks, "
        "`LITELLM_LOG=ERROR` (no access log), `LITELLM_TELEMETRY=False`, "
        "`LITELLM_LOCAL_MODEL_COST_MAP=True` (its bundled price map, nothing downloaded)"
    )
    if status.installed:
        status.version = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    return status


def portkey_status(peers_dir: Path) -> PeerStatus:
    """Whether Portkey's gateway (and node) is installed under ``peers_dir``, and its version."""
    entry = _portkey_entry(peers_dir)
    status = PeerStatus("portkey", "Portkey gateway", entry.exists() and shutil.which("node") is not None)
    status.configuration = (
        "`node build/start-server.js --port=N --headless`, `NODE_ENV=production`, no config, no cache, "
        "no Redis; each call names the provider (`x-portkey-provider: openai`) and the fake upstream "
        "(`x-portkey-custom-host`)"
    )
    if status.installed:
        status.version = str(json.loads((entry.parents[1] / "package.json").read_text())["version"])
    return status


# --- starting and stopping peers ---------------------------------------------------------


def _base_env() -> dict[str, str]:
    """A small environment: no API keys, proxies or settings of this shell reach a peer."""
    return {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}


def spawn_group(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """``args`` in a new session, so the whole tree it starts can be stopped together."""
    with log.open("wb") as out:
        return subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group this run started with ``proc`` (its pid is the group's id)."""
    for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.poll()


def _tail(log: Path, lines: int = 8) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


async def _wait_up(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until ``url`` answers; the process group is stopped when it does not."""
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise PeerFailed(f"exited with {proc.returncode} while starting: {_tail(log)}")
            try:
                await wait_ready(url, timeout_s=1)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise PeerFailed(f"not up after {START_TIMEOUT_S:.0f} s: {_tail(log)}") from None
    except BaseException:
        stop_group(proc)
        raise


async def start_litellm(peers_dir: Path, upstream: str, workdir: Path) -> Peer:
    """LiteLLM's proxy, one worker, routing gpt-4o-mini to ``upstream``/litellm/v1."""
    port, key = free_port(), f"sk-{secrets.token_hex(32)}"
    config = workdir / "litellm.yaml"
    config.write_text(_LITELLM_CONFIG.format(api_base=f"{upstream}/litellm/v1", master_key=key))
    env = _base_env() | {
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
    }
    litellm = peers_dir / "litellm-venv" / "bin" / "litellm"
    args = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / "litellm.log"
    proc = spawn_group([*args, "--num_workers", "1"], env, workdir, log)
    await _wait_up(proc, f"http://127.0.0.1:{port}/health/liveliness", log)
    return Peer("litellm", f"http://127.0.0.1:{port}/v1", key, [proc])


async def start_portkey(peers_dir: Path, upstream: str, workdir: Path) -> Peer:
    """Portkey's gateway on node, each call sent to ``upstream``/portkey/v1 by its custom host."""
    port = free_port()
    preload = workdir / "loopback.mjs"
    preload.write_text(_LOOPBACK_JS)
    env = _base_env() | {"NODE_ENV": "production"}
    node = shutil.which("node") or "node"
    args = [node, "--import", str(preload), str(_portkey_entry(peers_dir)), f"--port={port}", "--headless"]
    log = workdir / "portkey.log"
    proc = spawn_group(args, env, workdir, log)
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{upstream}/portkey/v1"}
    await _wait_up(proc, f"http://127.0.0.1:{port}/", log)
    return Peer("portkey", f"http://127.0.0.1:{port}/v1", "sk-bench", [proc], headers=headers)


STARTERS: dict[str, Callable[[Path, str, Path], Awaitable[Peer]]] = {
    "litellm": start_litellm,
    "portkey": start_portkey,
}


# --- load and checks -----------------------------------------------------------------------


def run_wrk_headers(target: Target, concurrency: int, duration_s: float) -> dict[str, Any]:
    """``bench.run.run_wrk`` for chat calls, with the target's extra headers (``-H``)."""
    return run_wrk(
        target, CHAT, concurrency, duration_s, target.headers if isinstance(target, Peer) else None
    )


async def warm_up(target: Target, upstream: str, concurrency: int) -> None:
    """A few calls one by one, each a 2xx chat completion from the upstream, then a
    second of load (first calls of a peer import and build what it needs)."""
    headers = {"Content-Type": "application/json"} | (target.headers if isinstance(target, Peer) else {})
    if target.key:
        headers["Authorization"] = f"Bearer {target.key}"
    before = await served(upstream, target.name)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for _ in range(WARM_UP_CALLS):
            async with http.post(f"{target.url}/chat/completions", data=CHAT, headers=headers) as resp:
                body = await resp.text()
                if resp.status != 200 or '"choices"' not in body:
                    raise PeerFailed(f"answered {resp.status}: {body[:300]}")
    if await served(upstream, target.name) - before < WARM_UP_CALLS:
        raise PeerFailed("answered without calling the upstream")
    await asyncio.to_thread(run_wrk_headers, target, concurrency, 1)


async def measure(
    target: Target, upstream: str, concurrency: int, round_: int, duration: float
) -> PeerResult:
    """One wrk run of chat calls; every answer must be a 2xx that reached the upstream."""
    pid = target.procs[0].pid
    calls_before, cpu_before = await served(upstream, target.name), cpu_seconds(pid)
    stats = await asyncio.to_thread(run_wrk_headers, target, concurrency, duration)
    fields = result_fields(target, "chat", concurrency, round_, stats, cpu_seconds(pid) - cpu_before)
    calls = await served(upstream, target.name) - calls_before
    ok = fields["ok"]
    if ok == 0 or ok != stats["requests"] or calls < ok:
        raise PeerFailed(
            f"c={concurrency}: {stats['requests']} calls, {stats['status_errors']} non-2xx, "
            f"{stats['other_errors']} socket errors, {calls} reached the upstream"
        )
    return PeerResult(**fields, rss_mb=peak_rss_mb(pid), upstream_calls=calls)


# --- the run -------------------------------------------------------------------------------


async def start_baselines(upstream_port: int, workdir: Path, started: list[Target]) -> None:
    """The upstream (the direct target), the bare forwarder and taximeter with a budget,
    each appended to ``started`` as soon as it runs."""
    upstream = f"http://127.0.0.1:{upstream_port}"
    direct = Target("direct", f"{upstream}/direct/v1")
    started.append(direct)
    direct.procs.append(spawn(PYTHON, "-m", "bench.upstream", str(upstream_port), cwd=HERE.parent))
    await wait_ready(f"{upstream}/served")
    port = free_port()
    forwarder = Target("forwarder", f"http://127.0.0.1:{port}/v1")
    started.append(forwarder)
    forwarder.procs.append(
        spawn(PYTHON, "-m", "bench.forwarder", str(port), f"{upstream}/forwarder/v1", cwd=HERE.parent)
    )
    await wait_ready(f"http://127.0.0.1:{port}/")
    started.append(await start_taximeter(TAXIMETER_NAME, f"{upstream}/{TAXIMETER_NAME}/v1", workdir, 1, True))


async def start_peers(
    statuses: list[PeerStatus], peers_dir: Path, upstream: str, workdir: Path, started: list[Target]
) -> None:
    """Each installed peer, appended to ``started``; one that fails to start is reported so."""
    for status in statuses:
        if not status.installed:
            status.status = f"not installed (`python -m bench.peers --install --peers-dir {peers_dir}`)"
            continue
        try:
            peer = await STARTERS[status.name](peers_dir, upstream, workdir)
        except PeerFailed as e:
            status.status = f"failed to start: {e}"
            continue
        started.append(peer)
        status.status = "measured"


async def run_rounds(
    targets: list[Target], statuses: list[PeerStatus], upstream: str, args: argparse.Namespace
) -> list[PeerResult]:
    """Warm each target up, then the rounds, interleaved; a peer that fails is dropped and
    reported so, a failure of any other target stops the run."""
    by_name = {s.name: s for s in statuses}
    live = list(targets)
    results: list[PeerResult] = []

    async def attempt(target: Target, step: Awaitable[Any]) -> Any:
        try:
            return await step
        except PeerFailed as e:
            if target.name not in by_name:
                raise
            by_name[target.name].status = f"failed, left out: {e}"
            live.remove(target)
            return None

    for target in list(live):
        await attempt(target, warm_up(target, upstream, max(args.concurrency)))
        await check_ledger(target, upstream)
    for round_ in range(args.rounds):
        for concurrency in args.concurrency:
            for target in list(live):
                result = await attempt(target, measure(target, upstream, concurrency, round_, args.duration))
                if result is not None:
                    results.append(result)
                await check_ledger(target, upstream)
    failed = {name for name, s in by_name.items() if s.status.startswith("failed")}
    return [r for r in results if r.target not in failed]


async def benchmark(args: argparse.Namespace, statuses: list[PeerStatus]) -> list[PeerResult]:
    workdir = Path(tempfile.mkdtemp(prefix="taximeter-bench-peers-"))
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    started: list[Target] = []
    try:
        await start_baselines(upstream_port, workdir, started)
        await start_peers(statuses, args.peers_dir, upstream, workdir, started)
        return await run_rounds(started, statuses, upstream, args)
    finally:
        for target in started:
            for proc in target.procs:
                (stop_group if isinstance(target, Peer) else stop)(proc)
        for target in started:
            await drop_database(getattr(target, "database", None))
        shutil.rmtree(workdir, ignore_errors=True)


# --- the report ----------------------------------------------------------------------------


def summarise(results: list[PeerResult]) -> dict[tuple[int, str], dict[str, float]]:
    """Medians over rounds by (concurrency, target); requests and upstream calls summed."""
    out: dict[tuple[int, str], dict[str, float]] = {}
    for key in dict.fromkeys((r.concurrency, r.target) for r in results):
        rows = [r for r in results if (r.concurrency, r.target) == key]
        out[key] = {
            attr: statistics.median(float(getattr(r, attr) or 0) for r in rows)
            for attr in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "rss_mb")
        } | {
            "requests": sum(r.requests for r in rows),
            "ok": sum(r.ok for r in rows),
            "upstream_calls": sum(r.upstream_calls for r in rows),
        }
    return out


def goals(summary: dict[tuple[int, str], dict[str, float]], peers: list[str]) -> list[dict[str, Any]]:
    """taximeter against each peer measured, at each concurrency: throughput and added p50."""
    out: list[dict[str, Any]] = []
    for (concurrency, name), s in summary.items():
        tx, direct = summary.get((concurrency, TAXIMETER_NAME)), summary.get((concurrency, "direct"))
        if name not in peers or tx is None or direct is None:
            continue
        tx_added, peer_added = tx["p50_ms"] - direct["p50_ms"], s["p50_ms"] - direct["p50_ms"]
        out += [
            {
                "goal": f"c={concurrency}: throughput ahead of {name}",
                "met": tx["rps"] >= s["rps"],
                "detail": f"{tx['rps']:,.0f} vs {s['rps']:,.0f} req/s ({tx['rps'] / s['rps']:.2f}×)",
            },
            {
                "goal": f"c={concurrency}: added p50 below {name}'s",
                "met": tx_added <= peer_added,
                "detail": f"+{tx_added:.3f} vs +{peer_added:.3f} ms over direct "
                f"({peer_added - tx_added:+.3f} ms in taximeter's favour)",
            },
        ]
    return out


def _table(summary: dict[tuple[int, str], dict[str, float]], concurrency: int) -> list[str]:
    direct = summary[(concurrency, "direct")]
    lines = [
        f"## chat, concurrency {concurrency}",
        "",
        "| target | req/s | ×direct | p50 ms | +p50 vs direct | p99 ms | CPU ms/req | peak RSS MB | "
        "calls (all 2xx) | reached upstream |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (c, name), s in summary.items():
        if c == concurrency:
            lines.append(
                f"| {name} | {s['rps']:,.0f} | {s['rps'] / direct['rps']:.2f} | {s['p50_ms']:.3f} | "
                f"{s['p50_ms'] - direct['p50_ms']:+.3f} | {s['p99_ms']:.3f} | "
                f"{s['cpu_ms_per_request']:.3f} | {s['rss_mb']:.1f} | {s['requests']:,.0f} | "
                f"{s['upstream_calls']:,.0f} |"
            )
    return [*lines, ""]


def report(
    results: list[PeerResult],
    statuses: list[PeerStatus],
    targets: list[dict[str, Any]],
    args: argparse.Namespace,
) -> str:
    summary = summarise(results)
    lines = [
        "# taximeter beside its peers",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        f"{args.rounds} round(s), {args.duration:g} s of `wrk` load per target and concurrency, targets",
        "interleaved round by round; figures are medians over rounds. Every call is a POST of a small",
        "`gpt-4o-mini` chat (max_tokens 16) answered by one fake upstream; each target reaches it under a",
        "path of its own, so the upstream's count of calls per target shows each one really went through.",
        "`taximeter-pg-redis` runs on Postgres + Redis with a budget in mode `both` (every call admitted by",
        "reservation and settled; its ledger checked to hold exactly one event per upstream call after",
        "every run); the peers run without budgets, in their cheapest configuration. CPU is that of each",
        "target's own process tree (for `direct`, the upstream's; Postgres and Redis, which only",
        "taximeter uses, are not counted). Everything shares the machine's cores with `wrk`.",
        "",
        "## Peers",
        "",
        "| peer | version | this run | configuration |",
        "| --- | --- | --- | --- |",
    ]
    for s in statuses:
        lines.append(f"| {s.product} | {s.version or '—'} | {s.status} | {s.configuration} |")
    lines.append("")
    for concurrency in args.concurrency:
        if (concurrency, "direct") in summary:
            lines += _table(summary, concurrency)
    lines += ["## Targets", ""]
    lines += [f"- {t['goal']}: {'met' if t['met'] else 'MISSED'}, {t['detail']}." for t in targets]
    if not targets:
        lines.append("- No peer was measured in this run, so there is nothing to compare taximeter with.")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--peers-dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    parser.add_argument("--install", action="store_true", help="install the peers in --peers-dir and exit")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 64])
    parser.add_argument("--out", type=Path, default=None, help="where to write the Markdown report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.install:
        for line in install(args.peers_dir):
            print(json.dumps(line))
        return 0
    if shutil.which("wrk") is None:
        print("bench.peers: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    statuses = [litellm_status(args.peers_dir), portkey_status(args.peers_dir)]
    results = asyncio.run(benchmark(args, statuses))
    measured = [s.name for s in statuses if s.status == "measured"]
    targets = goals(summarise(results), measured)
    if args.out is not None:
        args.out.write_text(report(results, statuses, targets, args))
    for line in [*map(asdict, results), *map(asdict, statuses), *targets]:
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
