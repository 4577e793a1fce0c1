"""Background responses through taximeter (spec section 4b), with the SDK on
both backends: admitted like any call, held while they run, charged once
by a watcher when they have ended, however often they are retrieved."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from taximeter.proxy.gateway.sweeper import sweep
from taximeter.proxy.gateway.watcher import watch_due
from tests.http.test_files import refused_unseen
from tests.support.clock import FakeClock
from tests.support.fake_upstream import RESPONSES
from tests.support.harness import Harness

M = Decimal(1_000_000)
# gpt-4o (openai.com/api/pricing): $2.50 input, $1.25 cached input, $10.00 output per 1M tokens.
GPT4O_RESPONSE = (
    (RESPONSES["input"] - RESPONSES["cached"]) * Decimal("2.50")
    + RESPONSES["cached"] * Decimal("1.25")
    + RESPONSES["output"] * Decimal("10.00")
) / M


async def looked_at(proxy: Harness, clock: FakeClock) -> int:
    clock.advance(seconds=proxy.services.settings.watch_check_max_s + 1)
    return await watch_due(proxy.services)


async def test_a_background_response_is_charged_once_when_it_has_run(
    proxy: Harness, clock: FakeClock
) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="5.00")
    acme = proxy.sdk(key)
    made = await acme.responses.create(model="gpt-4o", input="Hello", background=True)
    assert made.status == "queued"
    assert await looked_at(proxy, clock) == 0  # still queued: held, looked at again later
    assert await proxy.events("acme") == []
    proxy.upstream.finish_background()
    for _ in range(3):
        assert (await acme.responses.retrieve(made.id)).status == "completed"
    streamed = await acme.responses.retrieve(made.id, stream=True)
    assert [event.type async for event in streamed] == ["response.created", "response.completed"]
    assert await looked_at(proxy, clock) == 1
    assert await looked_at(proxy, clock) == 0  # watched no more
    [event] = await proxy.events("acme")
    assert Decimal(event["cost_usd"]) == GPT4O_RESPONSE
    assert (event["input_tokens"], event["output_tokens"], event["estimated"]) == (
        RESPONSES["input"],
        RESPONSES["output"],
        False,
    )
    assert Decimal((await proxy.status("acme"))["cost_used"]) == Decimal(event["cost"])


async def test_a_running_background_response_holds_its_reservation(proxy: Harness, clock: FakeClock) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=5_000)
    acme = proxy.sdk(key)
    await acme.responses.create(model="gpt-4o", input="Hello", background=True, max_output_tokens=3_000)
    await acme.responses.create(model="gpt-4o", input="Hello", background=True, max_output_tokens=3_000)
    assert await looked_at(proxy, clock) == 0  # the sweeper's keep-alive no longer concerns them
    clock.advance(seconds=2 * proxy.services.meter.reservation_ttl.total_seconds())
    assert await sweep(proxy.services.meter) == 0  # held past any call's reservation: not charged
    with pytest.raises(openai.RateLimitError):
        await acme.responses.create(model="gpt-4o", input="Hello", background=True, max_output_tokens=3_000)
    proxy.upstream.finish_background()
    assert await looked_at(proxy, clock) == 2
    status = await proxy.status("acme")
    assert status["tokens_used"] == 2 * (RESPONSES["input"] + RESPONSES["output"])


async def test_a_background_response_is_its_creators_alone(proxy: Harness, clock: FakeClock) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    rival = proxy.sdk(await proxy.new_client("rival"))
    made = await acme.responses.create(model="gpt-4o", input="Hello", background=True)
    await refused_unseen(proxy, rival.responses.retrieve(made.id))
    await refused_unseen(proxy, rival.responses.cancel(made.id))
    await refused_unseen(
        proxy, rival.responses.create(model="gpt-4o", input="more", previous_response_id=made.id)
    )
    assert (await acme.responses.cancel(made.id)).status == "cancelled"
    assert await looked_at(proxy, clock) == 1
    [event] = await proxy.events("acme")
    assert event["status"] == 499 and event["estimated"]  # cancelled, usage unknown: as reserved
    assert event["client_id"] == "acme"


@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_two_processes_watching_charge_it_once(make_proxy: Any, clock: FakeClock) -> None:
    first: Harness = await make_proxy()
    second: Harness = await make_proxy()
    acme = first.sdk(await first.new_client("acme", mode="cost", cost_limit="5.00"))
    await acme.responses.create(model="gpt-4o", input="Hello", background=True)
    first.upstream.finish_background()
    clock.advance(seconds=first.services.settings.watch_check_max_s + 1)
    done = await watch_due(first.services) + await watch_due(second.services)
    assert done == 1
    [event] = await second.events("acme")
    assert Decimal(event["cost_usd"]) == GPT4O_RESPONSE
    await first.services.meter.feedback.close()
    await second.services.meter.feedback.close()
    await second.assert_ledger_matches_counters()


async def test_a_background_response_is_charged_before_it_is_deleted(
    proxy: Harness, clock: FakeClock
) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    made = await acme.responses.create(model="gpt-4o", input="Hello", background=True)
    with pytest.raises(openai.ConflictError):  # still running: deleted, it could never be charged
        await acme.responses.delete(made.id)
    proxy.upstream.finish_background()
    await acme.responses.delete(made.id)  # ended, never looked at: charged now, then deleted
    [event] = await proxy.events("acme")
    assert Decimal(event["cost_usd"]) == GPT4O_RESPONSE and not event["estimated"]
    assert await looked_at(proxy, clock) == 0


async def test_a_background_response_holds_no_concurrency_slot(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    status, body = await proxy.admin(
        "PUT", "/admin/clients/acme/limits", {"limits": [{"name": "one", "metric": "concurrent", "limit": 1}]}
    )
    assert status == 200, body
    acme = proxy.sdk(key)
    await acme.responses.create(model="gpt-4o", input="Hello", background=True)
    await acme.responses.create(model="gpt-4o", input="Hello")  # the background one is answered
