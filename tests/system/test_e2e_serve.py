"""`taximeter serve` as a real process on the embedded default (SQLite file,
in-process gate): set up with the CLI, driven with the SDK, restarted, and
found with its ledger and counters intact; and a SIGTERM that lets a stream
in flight finish and be recorded."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from taximeter.store.factory import open_store
from tests.support.fake_upstream import CHAT, STREAM_PIECES, FakeUpstream
from tests.support.processes import TAXIMETER, Deployment
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # starts real processes

CALL_TOKENS = CHAT["prompt"] + CHAT["completion"]


@pytest.fixture
async def deployment(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Deployment]:
    upstream = await aiohttp_server(FakeUpstream().app())
    deployed = Deployment(tmp_path, str(upstream.make_url("/v1")))
    yield deployed
    await deployed.stop()


async def _somaxconn() -> int:
    text = await asyncio.to_thread(Path("/proc/sys/net/core/somaxconn").read_text)
    return int(text)


async def chat(client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])


async def test_serve_cli_sdk_restart(deployment: Deployment) -> None:
    assert "created" in await deployment.cli("clients", "add", "acme", "--name", "Acme Ltd")
    key = (await deployment.cli("keys", "create", "acme")).strip()
    assert key.startswith("tm_")
    await deployment.cli(
        "budgets", "set", "acme", "--mode", "tokens", "--tokens", str(2 * CALL_TOKENS), "--period", "monthly"
    )
    assert await asyncio.to_thread((deployment.workdir / "taximeter.db").exists)

    await deployment.start()
    # A burst of new connections waits in the accept queue (its size is ss's Send-Q).
    listening = await asyncio.to_thread(
        subprocess.run,
        ["ss", "-Hltn", f"sport = :{deployment.port}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(listening.stdout.split()[2]) >= min(1024, await _somaxconn())
    async with openai.AsyncOpenAI(base_url=f"{deployment.url}/v1", api_key=key, max_retries=0) as client:
        await chat(client)
        await chat(client)
        with pytest.raises(openai.RateLimitError):
            await chat(client)
        before = await deployment.status(key)
        assert (before["tokens_used"], before["paused"], before["pause_reason"]) == (
            2 * CALL_TOKENS,
            True,
            "token_limit",
        )

        await deployment.stop()
        await deployment.start()

        after = await deployment.status(key)
        assert {k: after[k] for k in ("tokens_used", "cost_used", "paused", "pause_reason")} == {
            k: before[k] for k in ("tokens_used", "cost_used", "paused", "pause_reason")
        }
        with pytest.raises(openai.RateLimitError):
            await chat(client)

        shown = json.loads(await deployment.cli("budgets", "show", "acme"))
        assert shown["tokens_used"] == 2 * CALL_TOKENS and shown["cost_used"] == before["cost_used"]
        usage = await deployment.cli("usage", "acme", "--by", "model")
        assert "gpt-4o" in usage and " 2 " in usage

        # A reset made with the CLI decides the running proxy's very next call.
        await deployment.cli("budgets", "reset", "acme")
        await chat(client)
        assert (await deployment.status(key))["tokens_used"] == CALL_TOKENS


async def test_bad_setting_stops_start_up_with_one_message(deployment: Deployment) -> None:
    deployment.env["TAXIMETER_PORT"] = "not-a-port"
    proc = await asyncio.create_subprocess_exec(
        TAXIMETER, "serve", cwd=deployment.workdir, env=deployment.env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        "taximeter: invalid setting 'port': Input should be a valid integer, unable to parse string as an integer"
    ]


async def test_sigterm_lets_a_stream_finish_and_records_it(aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeUpstream(gate=asyncio.Event())  # the stream stalls after its first event
    upstream = await aiohttp_server(fake.app())
    served = Deployment(tmp_path, str(upstream.make_url("/v1")))
    try:
        key = await served.new_client("acme")
        await served.start()
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{served.url}/v1/chat/completions",
                json={"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
                headers={"Authorization": f"Bearer {key}"},
            )
            first = await resp.content.readuntil(b"\n\n")
            assert served.server is not None
            served.server.send_signal(signal.SIGTERM)  # mid-stream
            await eventually(served.refuses_connections, what="the shutdown under way")
            assert served.server.returncode is None, "it exited with a stream in flight"
            fake.gate.set()  # type: ignore[union-attr]
            rest = await resp.content.read()
        assert b"data: [DONE]" in rest and all(p.encode() in first + rest for p in STREAM_PIECES)
        assert await asyncio.wait_for(served.server.wait(), 30) == 0
        served.server = None
        store = await open_store(f"sqlite:///{tmp_path}/taximeter.db")
        try:
            [event] = await store.list_events("acme", 10)
        finally:
            await store.close()
        assert (event.status, event.estimated, event.input_tokens) == (200, False, 1200)  # the real usage
    finally:
        fake.gate.set()  # type: ignore[union-attr]
        await served.stop()
