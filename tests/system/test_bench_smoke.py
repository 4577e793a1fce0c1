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
