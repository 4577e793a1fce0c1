"""A running proxy in front of the fake upstream, with admin helpers."""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import openai
from aiohttp import web
from aiohttp.test_utils import TestServer

from taximeter.proxy.services import SERVICES, Services
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import eventually, in_flight_together

ADMIN_TOKEN = "admin-SENTINEL-token-91c3"
T = TypeVar("T")


@dataclass
class Harness:
    server: TestServer
    upstream: FakeUpstream
    http: aiohttp.ClientSession
    sdks: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def app(self) -> web.Application:
        return self.server.app  # type: ignore[return-value]

    @property
    def services(self) -> Services:
        return self.app[SERVICES]

    def sdk(self, key: str, **kw: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, **{"max_retries": 0, **kw})
        self.sdks.append(client)
        return client

    async def close(self) -> None:
        for client in self.sdks:
            await client.close()
        await self.http.close()

    async def in_flight_together(self, calls: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
        """Run ``calls`` at once, none answered before every one has been
        admitted (and waits at the upstream) or refused; their results."""
        return await in_flight_together(self.upstream, calls)

    async def admin(
        self, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, f"{self.url}{path}", json=body, headers=headers) as resp:
            text = await resp.text()
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, text

    async def new_client(self, client_id: str = "acme", **budget: Any) -> str:
        """Create a client and a key (and a budget, if given); returns the key."""
        status, _ = await self.admin("POST", "/admin/clients", {"id": client_id, "name": client_id.title()})
        assert status == 201
        status, created = await self.admin("POST", f"/admin/clients/{client_id}/keys")
        assert status == 201
        if budget:
            status, body = await self.admin("PUT", f"/admin/budgets/{client_id}", budget)
            assert status == 200, body
        return str(created["key"])

    async def events(self, client_id: str | None = None) -> list[dict[str, Any]]:
        await self.services.meter.ledger.flush()
        query = f"?client_id={client_id}&limit=1000" if client_id else "?limit=1000"
        status, body = await self.admin("GET", f"/admin/usage/events{query}")
        assert status == 200
        return list(body["data"])

    async def events_once_recorded(self, client_id: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The client's events, once there is one: a call its client left is
        settled in the background."""
        events: list[dict[str, Any]] = []

        async def recorded() -> bool:
            events[:] = await self.events(client_id)
            return bool(events)

        await eventually(recorded, timeout_s, what=f"an event of {client_id} recorded")
        return events

    async def status(self, client_id: str) -> dict[str, Any]:
        status, body = await self.admin("GET", f"/admin/budgets/{client_id}")
        assert status == 200, body
        return dict(body)

    async def assert_ledger_matches_counters(self) -> None:
        """The ledger's sum for the period equals every budget's counters."""
        meter = self.services.meter
        await meter.ledger.flush()
        for state in await meter.store.list_budgets(meter.clock()):
            tokens, cost_nanos = await meter.store.ledger_totals(state.client_id, state.period_start)
            assert (tokens, cost_nanos) == (state.tokens_used, state.cost_used_nanos), state.client_id
