"""Budget events: thresholds once per period per metric, pauses and resets,
written to the outbox with the call that raised them, delivered signed to a
local receiver, redelivered until acknowledged, never twice after."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import openai
import pytest
from aiohttp import web

from taximeter.proxy.gateway.sweeper import sweep
from tests.support.clock import FakeClock
from tests.support.fake_upstream import CHAT
from tests.support.harness import Harness

CALL_TOKENS = CHAT["prompt"] + CHAT["completion"]
SECRET = "whsec-SENTINEL-4411"


@dataclass
class Receiver:
    up: bool = True
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        if not self.up:
            return web.Response(status=503)
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[Receiver, str]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    return receiver, str(server.make_url("/hook"))


async def chat(client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="gpt-4o", messages=[])


def verify(headers: dict[str, str], body: bytes) -> bool:
    parts = dict(part.split("=", 1) for part in headers["X-Taximeter-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


async def test_each_threshold_fires_once_signed(make_proxy: Any, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    proxy: Harness = await make_proxy(webhooks=[{"url": url, "secret": SECRET}])
    key = await proxy.new_client(
        "acme", mode="tokens", token_limit=10 * CALL_TOKENS, alert_thresholds=[0.2, 0.5]
    )
    client = proxy.sdk(key)
    for _ in range(6):  # 10%, 20%, ..., 60%
        await chat(client)
        await proxy.services.meter.ledger.flush()
        await proxy.services.webhooks.deliver_due()
    events = [e for e in hook.events() if e["type"] == "budget.threshold"]  # (a forecast is told too)
    assert [(e["type"], e["metric"], e["threshold"]) for e in events] == [
        ("budget.threshold", "tokens", 0.2),
        ("budget.threshold", "tokens", 0.5),
    ]
    assert [e["tokens_percent"] for e in events] == [20.0, 50.0]
    for headers, body in hook.received:
        assert verify(headers, body)
        assert headers["X-Taximeter-Event-Id"] == json.loads(body)["id"]
    assert SECRET not in str(hook.received)
    await proxy.assert_ledger_matches_counters()
    await proxy.close()


async def test_pause_and_reset_events_and_thresholds_again_next_period(
    make_proxy: Any, receiver: tuple[Receiver, str], clock: FakeClock
) -> None:
    hook, url = receiver
    proxy: Harness = await make_proxy(webhooks=[{"url": url, "secret": SECRET}])
    key = await proxy.new_client("acme", mode="tokens", token_limit=2 * CALL_TOKENS, period="daily")
    client = proxy.sdk(key)
    await chat(client)  # 50%
    await chat(client)  # 100%: 0.8, 0.9, 1.0 and paused
    with pytest.raises(openai.RateLimitError):
        await chat(client)
    clock.advance(days=1)
    await sweep(proxy.services.meter)  # the new day: reset
    await chat(client)  # 50% of the new period: nothing
    await chat(client)  # 100% again: the thresholds fire again
    await proxy.services.meter.ledger.flush()
    await proxy.services.webhooks.deliver_due()
    kinds = [(e["type"], e.get("threshold")) for e in hook.events()]
    day = [("budget.threshold", 0.8), ("budget.threshold", 0.9), ("budget.threshold", 1.0)]
    assert kinds == [("budget.paused", None), *day, ("budget.reset", None), ("budget.paused", None), *day]
    assert hook.events()[0]["pause_reason"] == "token_limit"
    await proxy.close()


async def test_redelivered_until_acknowledged_then_never_again(
    make_proxy: Any, receiver: tuple[Receiver, str], clock: FakeClock
) -> None:
    hook, url = receiver
    proxy: Harness = await make_proxy(webhooks=[{"url": url, "secret": SECRET}])
    await proxy.new_client("acme", mode="tokens", token_limit=10 * CALL_TOKENS)
    hook.up = False
    status, _ = await proxy.admin("POST", "/admin/budgets/acme/pause")
    assert status == 200
    sender = proxy.services.webhooks
    assert await sender.deliver_due() == 0
    assert await sender.deliver_due() == 0  # not due yet: backoff
    hook.up = True
    clock.advance(seconds=2)  # the first retry is 2 s later
    assert await sender.deliver_due() == 1
    clock.advance(seconds=3600)
    assert await sender.deliver_due() == 0
    assert [e["type"] for e in hook.events()] == ["budget.paused"]
    [(item, delivered)] = await proxy.services.meter.store.list_alerts("acme")
    assert delivered and item.attempts == 2
    await proxy.close()


async def test_no_webhooks_means_events_wait_in_the_outbox(proxy: Harness) -> None:
    await proxy.new_client("acme", mode="tokens", token_limit=100)
    await proxy.admin("POST", "/admin/budgets/acme/pause")
    assert await proxy.services.webhooks.deliver_due() == 0
    [(item, delivered)] = await proxy.services.meter.store.list_alerts("acme")
    assert (item.kind, delivered) == ("paused", False)


async def test_webhook_money_is_written_as_the_admin_api_writes_it(
    make_proxy: Any, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    proxy: Harness = await make_proxy(webhooks=[{"url": url, "secret": SECRET}])
    limits = {"big": "500", "tiny": "0.0000005"}
    for client_id, cost_limit in limits.items():
        key = await proxy.new_client(client_id, mode="cost", cost_limit=cost_limit, period="none")
        async with proxy.sdk(key) as client:
            # 42 tokens at $0.02/1M: a cost of a few millionths, which str() writes with an exponent.
            await client.embeddings.create(model="text-embedding-3-small", input="hello")
    await proxy.services.meter.ledger.flush()
    status, _ = await proxy.admin("POST", "/admin/budgets/big/pause")  # an event while far from its limit
    assert status == 200
    await proxy.services.webhooks.deliver_due()
    events = hook.events()
    assert {e["client_id"] for e in events} == set(limits)
    for event in events:
        admin = await proxy.status(event["client_id"])
        assert (event["cost_limit"], event["cost_used"]) == (admin["cost_limit"], admin["cost_used"])
        assert event["cost_limit"] == limits[event["client_id"]]
        assert "E" not in event["cost_used"] and Decimal(event["cost_used"]) > 0
    await proxy.close()


async def test_a_budget_forecast_to_run_out_early_is_told_once(
    make_proxy: Any, receiver: tuple[Receiver, str], clock: FakeClock
) -> None:
    hook, url = receiver
    proxy: Harness = await make_proxy(webhooks=[{"url": url, "secret": SECRET}])
    clock.set(datetime(2026, 3, 10, 15, 0, tzinfo=UTC))  # 9 days 15 hours into a 31-day month
    key = await proxy.new_client("acme", mode="tokens", token_limit=10 * CALL_TOKENS, alert_thresholds=[1.0])
    client = proxy.sdk(key)
    for _ in range(4):  # 6,000 tokens in 831,600 s: 19,324 by the month's end, past 15,000
        await chat(client)
    await proxy.services.meter.ledger.flush()
    await chat(client)  # a fifth call: no second forecast this period
    await proxy.services.meter.ledger.flush()
    await proxy.services.webhooks.deliver_due()
    [told] = [e for e in hook.events() if e["type"] == "budget.forecast"]
    # At 6,000 tokens: 9,000 left at 6,000 / 831,600 s: 1,247,400 s on, the 25th at 01:30.
    assert told["runs_out_at"] == "2026-03-25T01:30:00Z"
    assert (told["tokens_at_period_end"], told["next_reset_at"]) == (19_324, "2026-04-01T00:00:00Z")
    status = await proxy.status("acme")  # 7,500 tokens now: 7,500 x 2,678,400 / 831,600 by the end
    assert status["forecast"]["tokens_at_period_end"] == 24_155
    assert status["forecast"]["runs_out_at"] == "2026-03-20T06:00:00Z"  # 7,500 left at the same rate


async def test_a_young_period_has_no_forecast_yet(proxy: Harness, clock: FakeClock) -> None:
    clock.set(datetime(2026, 3, 1, 0, 30, tzinfo=UTC))  # half an hour into the month
    key = await proxy.new_client("acme", mode="tokens", token_limit=10 * CALL_TOKENS)
    await chat(proxy.sdk(key))
    assert (await proxy.status("acme"))["forecast"] is None
