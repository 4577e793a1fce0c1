"""`taximeter serve` at start-up: one summary once it listens, or one line
naming the cause and exit code 2 (before: a "listening" line, then a traceback)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import Deployment, free_port

pytestmark = pytest.mark.slow

TAXIMETER = str(Path(sys.executable).parent / "taximeter")  # the console script of this interpreter


def serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAXIMETER_")}
    environ |= {"TAXIMETER_DATABASE_URL": f"sqlite:///{tmp_path}/t.db", "TAXIMETER_PORT": str(free_port())}
    environ |= {f"TAXIMETER_{k.upper()}": v for k, v in env.items()}
    return subprocess.run(
        [TAXIMETER, "serve"], env=environ, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ended = serve(tmp_path, port=str(port))
    assert ended.returncode == 2
    assert (
        ended.stderr.strip().splitlines()[-1]
        == f"taximeter: cannot start: 127.0.0.1:{port} is already in use"
    )
    assert "Traceback" not in ended.stderr and "listening" not in ended.stderr + ended.stdout


def test_an_unreachable_store_is_one_line_without_its_password(tmp_path: Path) -> None:
    ended = serve(tmp_path, database_url="postgresql://postgres:hunter2@127.0.0.1:1/nowhere")
    assert ended.returncode == 2
    assert ended.stderr.strip().splitlines()[-1] == (
        "taximeter: cannot start: store postgres postgresql://postgres:***@127.0.0.1:1/nowhere unavailable: "
        "cannot connect to Postgres: [Errno 111] Connection refused"
    )
    assert "hunter2" not in ended.stderr + ended.stdout and "Traceback" not in ended.stderr


def test_a_bad_catalog_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text('[models."x"]\napi_type = "chat"\ninput = 2.5\n')
    ended = serve(tmp_path, pricing_files=f'["{bad}"]')
    assert ended.returncode == 2
    assert ended.stderr.strip().splitlines()[-1] == (
        f'taximeter: cannot start: price catalog: {bad}: models.x.input: write prices as strings, e.g. "2.50"'
    )


def test_the_summary_says_what_runs_and_no_secret(tmp_path: Path) -> None:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAXIMETER_")}
    environ |= {
        "TAXIMETER_DATABASE_URL": f"sqlite:///{tmp_path}/t.db",
        "TAXIMETER_PORT": str(port),
        "TAXIMETER_UPSTREAM_API_KEY": "sk-SENTINEL-upstream",
        "TAXIMETER_ADMIN_TOKEN": "SENTINEL-admin-token",
    }
    process = subprocess.Popen([TAXIMETER, "serve"], env=environ, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(5)]
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    text = "".join(lines)
    assert lines[0].startswith("taximeter ") and lines[0].rstrip().endswith(f"http://127.0.0.1:{port}/v1")
    assert f"sqlite {tmp_path}/t.db" in text and "in-process" in text
    assert "default https://api.openai.com/v1 (key set)" in text
    assert f"http://127.0.0.1:{port}/dashboard" in text
    assert "SENTINEL" not in text


async def test_twenty_sigterms_in_a_row_all_end_the_process(tmp_path: Path) -> None:
    """Spec 11: SIGTERM always ends the process (before: now and then the
    SQLite proxy never exited). Twenty starts, a call each, twenty SIGTERMs:
    each exits, with code 0, well within the drain."""
    upstream_url = "http://127.0.0.1:9/v1"  # no upstream is needed: /budget/status is answered here
    deployment = Deployment(tmp_path, upstream_url)
    key = await deployment.new_client("acme", "--mode", "tokens", "--tokens", "1000")
    waited = []
    for _ in range(20):
        await deployment.start()
        assert (await deployment.status(key))["client_id"] == "acme"  # the store was read
        assert deployment.server is not None
        started = time.monotonic()
        deployment.server.send_signal(signal.SIGTERM)  # only the process this test started
        assert await asyncio.wait_for(deployment.server.wait(), 30) == 0
        waited.append(time.monotonic() - started)
        deployment.server = None
    assert max(waited) < 5, waited
