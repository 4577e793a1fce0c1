"""Logs are JSON lines with the call's fields and no secret, written in the
background, whole and in order. (A SIGTERM that lets a stream finish is in
tests/system/test_e2e_serve.py.)"""

from __future__ import annotations

import json
import logging
import queue

import pytest

from taximeter.proxy.logs import _QueueHandler, configure_logging, written_in_background
from tests.support.fake_upstream import UPSTREAM_KEY
from tests.support.harness import ADMIN_TOKEN, Harness


async def test_json_logs_carry_the_call_and_no_secret(
    proxy: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("INFO", as_json=True)
    try:
        key = await proxy.new_client("acme")
        await proxy.sdk(key).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "my secret prompt"}]
        )
        await proxy.services.meter.ledger.flush()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [metered] = [line for line in lines if line["event"] == "request_metered"]
    assert metered["client"] == "acme" and metered["model"] == "gpt-4o" and metered["api_type"] == "chat"
    assert metered["status"] == 200 and metered["tokens"] == 1500 and metered["cost"] == "0.02875"
    assert metered["request_id"].startswith("req_") and metered["latency_ms"] >= metered["upstream_ms"] >= 0
    assert metered["overhead_ms"] >= 0
    text = json.dumps(lines)
    for secret in (key, UPSTREAM_KEY, ADMIN_TOKEN, "my secret prompt"):
        assert secret not in text


def test_logs_written_in_background_arrive_whole_and_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("INFO", as_json=True)
    log = logging.getLogger("taximeter.test")
    try:
        with written_in_background():
            for i in range(200):
                log.info("step", extra={"n": i, "client": "acme"})
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed", extra={"client": "acme"})
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["n"] for line in lines if line["event"] == "step"] == list(range(200))
    [failed] = [line for line in lines if line["event"] == "failed"]
    assert failed["client"] == "acme" and "ValueError: boom" in failed["exc"]


def test_a_full_log_queue_drops_and_counts_rather_than_blocks() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue(1)
    handler = _QueueHandler(records)
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "line", (), None)
    handler.handle(record)
    handler.handle(record)
    handler.handle(record)
    assert (records.qsize(), handler.dropped) == (1, 2)
