"""A change made by another process - here the CLI, on the same database -
decides the very next call of a running proxy, on both backends (spec
section 11): a pause, a resume, a reset, a key revoked, limits set. No
waiting for a copy to expire (gate_refresh_s and key_cache_s are set long)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.clock import FakeClock
from tests.support.harness import Harness
from tests.support.processes import TAXIMETER

MESSAGES = [{"role": "user", "content": "Hi"}]


def cli_on(backend: dict[str, str], workdir: Path) -> Callable[..., Awaitable[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXIMETER_")}
    env |= {f"TAXIMETER_{k.upper()}": v for k, v in backend.items()}

    async def cli(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            TAXIMETER,
            *args,
            cwd=workdir,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    return cli


@pytest.mark.slow
async def test_a_cli_change_decides_the_very_next_call(
    make_proxy: Any, backend: dict[str, str], tmp_path: Path, clock: FakeClock
) -> None:
    proxy: Harness = await make_proxy(gate_refresh_s=3600, key_cache_s=3600)
    cli = cli_on(backend, tmp_path)
    clock.set(datetime.now(UTC))
    key = await proxy.new_client("acme", mode="tokens", token_limit=1_000_000)
    sdk = proxy.sdk(key)

    async def chat() -> None:
        clock.set(datetime.now(UTC))  # the CLI runs on the real clock: so does the proxy here
        await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]

    await chat()  # the proxy now keeps the key, the terms and the budget's copy
    await cli("budgets", "pause", "acme")
    with pytest.raises(openai.RateLimitError):
        await chat()
    await cli("budgets", "resume", "acme")
    await chat()
    await cli("budgets", "set", "acme", "--mode", "tokens", "--tokens", "4500")
    await chat()  # three calls of 1,500 tokens: the limit is reached
    with pytest.raises(openai.RateLimitError):
        await chat()
    await cli("budgets", "reset", "acme")
    await chat()
    limits = tmp_path / "limits.toml"
    await asyncio.to_thread(
        limits.write_text,
        '[[limits]]\nname = "no-4o"\nmetric = "requests"\nlimit = 5\nwindow = "daily"\nmodels = ["gpt-4o"]\n',
    )
    await cli("limits", "set", "acme", str(limits))
    await chat()
    with pytest.raises(openai.RateLimitError):
        await chat()
    [prefix] = [line.split()[0] for line in (await cli("keys", "list", "acme")).splitlines() if line.strip()]
    await cli("keys", "revoke", prefix)
    with pytest.raises(openai.AuthenticationError):
        await chat()
