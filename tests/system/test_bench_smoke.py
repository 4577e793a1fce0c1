"""The benchmark cannot rot: a few seconds of it run, and its ledger check holds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.availability import unavailable

pytestmark = pytest.mark.slow  # starts real processes

ROOT = Path(__file__).resolve().parents[2]


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m`` a benchmark module, a few minutes at most; it must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_benchmark_smoke_runs_and_the_ledger_is_exact() -> None:
    if shutil.which("wrk") is None:
        unavailable("wrk is not installed", ".ci/run installs Debian's wrk package")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]  # it raises if any event is lost or doubled
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {r["target"] for r in rows} == {"direct", "forwarder", "taximeter-embedded-limits"}
    assert all(r["ok"] > 0 and r["ok"] == r["requests"] for r in rows)


def test_a_big_upload_streams_through_with_flat_memory() -> None:
    """The smoke version of ``python -m bench.upload_memory`` (200 MB there)."""
    result = run_module("bench.upload_memory", "--mb", "20")
    figures = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    number = {name: float(value.replace(",", "")) for name, value in figures.items()}
    assert number["upstream_got_mb"] == number["file_mb"] >= 20  # relayed whole
    assert number["rss_growth_mb"] < 50 and number["listed"] == 1


def test_a_big_ledger_scenario_runs_and_its_export_is_exact() -> None:
    """The smoke version of ``python -m bench.ledger`` (10 million events there)."""
    result = run_module("bench.ledger", "--events", "3000")
    figures = json.loads(result.stdout.splitlines()[0])
    assert figures["csv_rows"] == figures["big_events"] > 0  # every row of the client, once
    assert figures["write_big_per_s"] > 0 and figures["write_empty_per_s"] > 0
    assert all(figures[f"usage_{g}_ms"] > 0 for g in ("model", "day", "end_user"))


def test_the_peers_scenario_runs_and_says_which_peers_are_not_installed(tmp_path: Path) -> None:
    """The smoke version of ``python -m bench.peers``, with no peer installed."""
    if shutil.which("wrk") is None:
        unavailable("wrk is not installed", ".ci/run installs Debian's wrk package")
    out = tmp_path / "PEERS.md"
    result = run_module(
        "bench.peers",
        *("--duration", "1", "--rounds", "1", "--concurrency", "4"),
        *("--peers-dir", str(tmp_path / "no-peers"), "--out", str(out)),
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    rows = {line["target"]: line for line in lines if "target" in line}
    assert set(rows) == {"direct", "forwarder", "taximeter-pg-redis"}
    taximeter = rows["taximeter-pg-redis"]
    assert taximeter["ok"] > 0 and taximeter["ok"] == taximeter["requests"]  # and its ledger was exact
    assert [line["installed"] for line in lines if "installed" in line] == [False, False]
    report = out.read_text()
    assert "| LiteLLM proxy | — | not installed" in report
    assert "| Portkey gateway | — | not installed" in report


def test_many_slow_streams_all_complete_and_each_is_metered_exactly() -> None:
    """The smoke version of ``python -m bench.streams`` (2,000 streams of 100 chunks there)."""
    result = run_module(
        "bench.streams", "--streams", "20", "--chunks", "10", "--seconds", "1", "--ramp", "0.2"
    )
    figures = {f["setup"]: f for f in json.loads(result.stdout.splitlines()[-1])["figures"]}
    assert set(figures) == {
        "direct",
        "forwarder-asyncio",
        "forwarder-uvloop",
        "taximeter-embedded",
        "taximeter-pg-redis",
    }
    for f in figures.values():
        assert f["completed"] == f["streams"] == 20 and f["relayed_chunks"] == 20 * 11, f
        assert f["added_ms"]["p99"] is not None and f["peak_open"] > 0
    for name in ("taximeter-embedded", "taximeter-pg-redis"):
        f = figures[name]
        assert f["events"] == f["metered_exactly"] == 20 and f["unmetered"] == f["wrong"] == 0, f
        assert f["cpu_us_per_chunk"] > 0 and f["rss_at_peak_mb"] > 0


def test_many_tenants_scenario_runs_and_its_ledger_is_exact(tmp_path: Path) -> None:
    """The smoke version of ``python -m bench.tenants`` (100, 1,000 and 10,000 clients there)."""
    if shutil.which("wrk") is None:
        unavailable("wrk is not installed", ".ci/run installs Debian's wrk package")
    out = tmp_path / "TENANTS.md"
    result = run_module(
        "bench.tenants", *("--clients", "20,60", "--idle", "2", "--duration", "1", "--out", str(out))
    )
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["clients"] for r in rows] == [20, 60]
    for r in rows:  # it exits non-zero when an event is lost or doubled, or a list misses a client
        assert r["events"] == r["calls"] > 0 and r["overview_clients"] == r["admin_budgets"] == r["clients"]
        assert r["one_rps"] > 0 and r["random_rps"] > 0 and r["pg_xacts_per_tick"] > 0
    assert "| 60 |" in out.read_text()
