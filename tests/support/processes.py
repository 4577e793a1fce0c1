"""Real `taximeter` processes for tests: started, driven and stopped by pid."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.fake_upstream import UPSTREAM_KEY

TAXIMETER = str(Path(sys.executable).with_name("taximeter"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Deployment:
    def __init__(self, workdir: Path, upstream_url: str, **settings: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The upstream, and whatever a test adds; everything else is the default.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TAXIMETER_")}
        self.env |= {"TAXIMETER_UPSTREAM_URL": upstream_url, "TAXIMETER_UPSTREAM_API_KEY": UPSTREAM_KEY}
        self.env |= {f"TAXIMETER_{k.upper()}": v for k, v in settings.items()}
        self.server: asyncio.subprocess.Process | None = None
        self._migrated = False

    async def cli(self, *args: str) -> str:
        if not self._migrated and args[:1] != ("migrate",):
            await self.cli("migrate")  # the CLI creates no database but by `migrate`
        self._migrated = True
        proc = await asyncio.create_subprocess_exec(
            TAXIMETER,
            *args,
            cwd=self.workdir,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    async def new_client(self, client_id: str = "acme", *budget: str) -> str:
        """Create a client and a key with the CLI (and a budget, given the
        arguments of ``budgets set`` after the client id); returns the key."""
        await self.cli("clients", "add", client_id)
        key = (await self.cli("keys", "create", client_id)).strip()
        if budget:
            await self.cli("budgets", "set", client_id, *budget)
        return key

    async def start(self) -> None:
        self.server = await asyncio.create_subprocess_exec(
            TAXIMETER,
            "serve",
            "--port",
            str(self.port),
            cwd=self.workdir,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("taximeter serve did not become ready")

    async def refuses_connections(self) -> bool:
        """Whether its port is closed: a server shutting down stops listening
        first, then waits for the calls in flight."""
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return True
        writer.close()
        await writer.wait_closed()
        return False

    async def kill(self) -> None:
        """kill -9: no drain, no flush, as if the host lost power."""
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)  # only the process this test started
        await asyncio.wait_for(self.server.wait(), 30)
        self.server = None

    async def stop(self) -> None:
        if self.server is not None and self.server.returncode is None:
            self.server.send_signal(signal.SIGTERM)  # only the process this test started
            await asyncio.wait_for(self.server.wait(), 30)
        self.server = None

    async def status(self, key: str) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}/budget/status", headers={"Authorization": f"Bearer {key}"}) as resp,
        ):
            assert resp.status == 200
            return dict(await resp.json())
