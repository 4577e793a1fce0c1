"""The command as a process: a reader that goes away is not an error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import aiohttp
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import Deployment
from tests.support.waiting import eventually


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly() -> None:
    """Before: `taximeter usage acme | head` ended in a BrokenPipeError traceback."""
    code = (
        "import sys\n"
        "from taximeter.proxy.cli import cli\n"
        "def lots(argv):\n"
        "    for n in range(100_000):\n"
        "        print('row', n)\n"
        "    return 0\n"
        "cli._main = lots\n"
        "sys.exit(cli.main([]))\n"
    )
    reader = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert reader.stdin is not None
    writer = subprocess.run(
        [sys.executable, "-c", code], stdout=reader.stdin, stderr=subprocess.PIPE, timeout=60, check=False
    )
    reader.stdin.close()
    assert reader.stdout is not None
    out = reader.stdout.read()
    reader.wait(timeout=10)
    assert out == b"row 0\n"
    assert (writer.returncode, writer.stderr) == (0, b"")


def test_the_cli_names_its_database_and_creates_none_unasked(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a CLI run from another folder silently created an empty taximeter.db."""
    from taximeter.proxy.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)  # the test run's logging stays as it is
    for name in [n for n in os.environ if n.startswith("TAXIMETER_")]:
        monkeypatch.delenv(name)
    assert cli.main(["clients", "list"]) == 2
    assert not (tmp_path / "taximeter.db").exists()
    assert f"no database at {tmp_path}/taximeter.db" in capsys.readouterr().err
    assert cli.main(["--create", "clients", "add", "acme"]) == 0
    assert f"taximeter: database sqlite {tmp_path}/taximeter.db" in capsys.readouterr().err
    assert cli.main(["clients", "list"]) == 0 and "acme" in capsys.readouterr().out


@pytest.mark.slow
async def test_rates_terms_and_credits_set_by_the_cli_reach_a_running_proxy(
    aiohttp_server: Any, tmp_path: Any
) -> None:
    """The CLI is another process: what it sets reaches the proxy's next calls
    within its key cache, sweep and gate refresh intervals, with no restart."""
    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    admin = "a" * 32
    proxy = Deployment(
        tmp_path, str(upstream.make_url("/v1")), sweep_interval_s="0.2", key_cache_s="0.2", admin_token=admin
    )
    try:
        key = await proxy.new_client("acme", "--mode", "cost", "--cost", "0.01")
        await proxy.start()
        client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
        messages: Any = [{"role": "user", "content": "Hi"}]
        await client.chat.completions.create(model="gpt-4o", messages=messages)  # 0.02875 BRL: paused
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="gpt-4o", messages=messages)
        said = await proxy.cli("credits", "add", "acme", "1", "--note", "top-up")
        assert said.startswith("credited 1 BRL to acme")
        assert "6.25 per USD" in await proxy.cli("rates", "set", "BRL", "6.25")
        assert "markup 1.5" in await proxy.cli("clients", "set", "acme", "--markup", "1.5")
        newest: dict[str, Any] = {}

        async def charged_at_the_new_terms() -> bool:
            try:  # the credit lifts the pause (the gate's copy within its refresh interval)
                await client.chat.completions.create(model="gpt-4o", messages=messages)
            except openai.RateLimitError:
                return False
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"{proxy.url}/admin/usage/events?client_id=acme&limit=1",
                    headers={"Authorization": f"Bearer {admin}"},
                ) as resp,
            ):
                newest.update((await resp.json())["data"][0])
            return (newest["exchange_rate"], newest["markup"]) == ("6.25", "1.5")

        await eventually(charged_at_the_new_terms, 10, what="the new rate and markup in force")
        # gpt-4o, 1000 uncached + 200 cached in, 300 out: $0.00575 x 6.25 x 1.5.
        assert newest["cost"] == "0.05390625"
        assert "top-up" in await proxy.cli("credits", "list", "acme")
        declared = tmp_path / "limits.toml"
        toml = '[[limits]]\nname = "rpm"\nmetric = "requests"\nlimit = 100\nwindow = "minute"\n'
        await asyncio.to_thread(declared.write_text, toml)
        assert "1 limit(s) set for acme" in await proxy.cli("limits", "set", "acme", str(declared))
        shown = await proxy.cli("limits", "show", "acme")
        assert shown.startswith("rpm\trequests ") and "/100 (minute)" in shown
        assert "BRL\t6.25" in await proxy.cli("rates", "list")
        await client.close()
    finally:
        await proxy.stop()
