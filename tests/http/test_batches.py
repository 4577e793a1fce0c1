"""Batches through taximeter (spec section 4b), with the SDK on both
backends: admitted by reserving their input at batch prices, watched until
they end, each line charged once at batch prices, kept apart per client."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import orjson
import pytest
import redis.asyncio as aioredis

from taximeter.proxy.gateway.sweeper import sweep
from taximeter.proxy.gateway.watcher import watch_due
from taximeter.store.base import StoreUnavailable
from tests.http.test_files import batch_lines, refused_unseen
from tests.support.clock import FakeClock
from tests.support.fake_upstream import CHAT, EMBEDDING_TOKENS
from tests.support.harness import Harness

M = Decimal(1_000_000)
# gpt-4o-mini on the Batch API (openai.com/api/pricing, 2026-11): $0.075 input,
# $0.30 output per 1M tokens, half the standard $0.15 / $0.60. The batch
# tier lists no cached-input rate: cached tokens cost the batch input rate.
MINI_BATCH_LINE = (CHAT["prompt"] * Decimal("0.075") + CHAT["completion"] * Decimal("0.30")) / M
# text-embedding-3-small: $0.02 per 1M; no batch rate in the catalog: the standard one.
EMBED_LINE = EMBEDDING_TOKENS * Decimal("0.02") / M


def usd(value: Decimal | str) -> Decimal:
    """Money as the ledger keeps it (to 1e-9), to compare by value."""
    return Decimal(value).quantize(Decimal("1e-9"))


async def ended_and_charged(proxy: Harness, clock: FakeClock) -> int:
    """Let the watcher look once more (its next look is due), after the upstream ends the batches."""
    clock.advance(seconds=proxy.services.settings.watch_check_max_s + 1)
    return await watch_due(proxy.services)


async def lines_charged(proxy: Harness, batch_id: str) -> list[dict[str, Any]]:
    """The events of a batch's lines, by request id; the batch's own event
    (its creation, free, in place of its reservation) checked and left out."""
    events = [e for e in await proxy.events() if e["batch_id"] == batch_id]
    own = [e for e in events if "/" not in e["request_id"]]
    assert len(own) == 1 and usd(own[0]["cost_usd"]) == 0 and not own[0]["estimated"], own
    return sorted((e for e in events if "/" in e["request_id"]), key=lambda e: str(e["request_id"]))


async def uploaded(sdk: openai.AsyncOpenAI, data: bytes) -> str:
    return (await sdk.files.create(file=("batch.jsonl", data), purpose="batch")).id


async def test_a_batch_is_charged_line_by_line_at_batch_prices(proxy: Harness, clock: FakeClock) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="5.00")
    acme = proxy.sdk(key)
    file_id = await uploaded(acme, batch_lines(3))
    batch = await acme.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating"
    assert await watch_due(proxy.services) == 0  # its first look is not due yet
    assert await ended_and_charged(proxy, clock) == 0  # still running: held, looked at later
    assert await proxy.events("acme") == []
    proxy.upstream.run_batches()
    assert await ended_and_charged(proxy, clock) == 1
    done = await acme.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id is not None
    output = (await acme.files.content(done.output_file_id)).content
    assert [orjson.loads(x)["custom_id"] for x in output.splitlines()] == ["line-0", "line-1", "line-2"]
    events = await lines_charged(proxy, batch.id)
    assert [e["request_id"] for e in events] == [f"{batch.id}/line-{i}" for i in range(3)]
    for event in events:
        assert (event["batch_id"], usd(event["cost_usd"]), event["estimated"]) == (
            batch.id,
            usd(MINI_BATCH_LINE),
            False,
        )
        assert (event["input_tokens"], event["output_tokens"]) == (CHAT["prompt"], CHAT["completion"])
        assert event["service_tier"] == "batch" and event["api_type"] == "chat"
        assert usd(event["cost"]) == usd(MINI_BATCH_LINE * Decimal(event["exchange_rate"]))
    assert usd((await proxy.status("acme"))["cost_used"]) == sum(usd(e["cost"]) for e in events)
    assert await watch_due(proxy.services) == 0  # watched no more
    assert await ended_and_charged(proxy, clock) == 0


async def test_a_batch_larger_than_the_budget_is_refused_before_the_upstream(proxy: Harness) -> None:
    # 200 lines x 1000 output tokens reserve over 200 x 1000 x $0.30 / 1M = $0.06: more than R$ 0.001.
    key = await proxy.new_client("acme", mode="cost", cost_limit="0.001")
    acme = proxy.sdk(key)
    file_id = await uploaded(acme, batch_lines(200, max_tokens=1000))
    seen = len(proxy.upstream.received)
    with pytest.raises(openai.RateLimitError) as caught:
        await acme.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert (caught.value.code, caught.value.response.headers["x-should-retry"]) == (
        "budget_exceeded",
        "false",
    )
    assert len(proxy.upstream.received) == seen and proxy.upstream.batches == {}


async def test_a_running_batch_holds_its_reservation_until_it_ends(proxy: Harness, clock: FakeClock) -> None:
    # Each batch of 20 lines x 1000 output tokens reserves $0.006 and a little
    # input (R$ 0.030 at the default rate of 5), and its lines cost 20 x
    # $0.00018 = $0.0036 (R$ 0.018): one fits in R$ 0.05, two do not; once
    # the first is charged, the second does.
    key = await proxy.new_client("acme", mode="cost", cost_limit="0.05")
    acme = proxy.sdk(key)
    first = await uploaded(acme, batch_lines(20, max_tokens=1000))
    second = await uploaded(acme, batch_lines(20, max_tokens=1000))
    await acme.batches.create(input_file_id=first, endpoint="/v1/chat/completions", completion_window="24h")
    assert await ended_and_charged(proxy, clock) == 0  # looked at while running: held on
    with pytest.raises(openai.RateLimitError) as caught:  # does not fit beside the first
        await acme.batches.create(
            input_file_id=second, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert caught.value.code == "budget_exceeded"
    proxy.upstream.run_batches()
    assert await ended_and_charged(proxy, clock) == 1  # its lines charged, the rest of its hold let go
    await acme.batches.create(input_file_id=second, endpoint="/v1/chat/completions", completion_window="24h")


async def test_a_cancelled_batch_charges_its_completed_lines_only(proxy: Harness, clock: FakeClock) -> None:
    acme = proxy.sdk(await proxy.new_client("acme", mode="cost", cost_limit="5.00"))
    file_id = await uploaded(acme, batch_lines(5))
    batch = await acme.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert (await acme.batches.cancel(batch.id)).status == "cancelling"
    proxy.upstream.run_batches(completed=3, failing=frozenset({1}))
    assert await ended_and_charged(proxy, clock) == 1
    assert (await acme.batches.retrieve(batch.id)).status == "cancelled"
    events = {e["request_id"]: e for e in await lines_charged(proxy, batch.id)}
    assert set(events) == {f"{batch.id}/line-{i}" for i in range(3)}
    assert usd(events[f"{batch.id}/line-1"]["cost_usd"]) == 0  # refused by the upstream: free
    assert events[f"{batch.id}/line-1"]["status"] == 400
    assert [usd(events[f"{batch.id}/line-{i}"]["cost_usd"]) for i in (0, 2)] == [usd(MINI_BATCH_LINE)] * 2
    assert usd((await proxy.status("acme"))["cost_used"]) == sum(usd(e["cost"]) for e in events.values())


async def test_embedding_batches_are_charged_as_embeddings(proxy: Harness, clock: FakeClock) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    lines = b"".join(
        orjson.dumps(
            {
                "custom_id": f"e{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": "hello"},
            }
        )
        + b"\n"
        for i in range(2)
    )
    file_id = await uploaded(acme, lines)
    with pytest.raises(openai.BadRequestError) as caught:  # the file's lines call another endpoint
        await acme.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert caught.value.param == "endpoint"  # type: ignore[attr-defined]
    batch = await acme.batches.create(
        input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
    )
    proxy.upstream.run_batches()
    assert await ended_and_charged(proxy, clock) == 1
    events = await lines_charged(proxy, batch.id)
    assert [e["request_id"] for e in events] == [f"{batch.id}/e0", f"{batch.id}/e1"]
    assert {(e["api_type"], usd(e["cost_usd"])) for e in events} == {("embeddings", usd(EMBED_LINE))}


async def test_a_batch_input_taximeter_cannot_estimate_is_refused(proxy: Harness) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    file_id = await uploaded(acme, batch_lines(2) + b"{not json}\n")
    with pytest.raises(openai.BadRequestError) as caught:
        await acme.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "1 of the input file's 3 lines" in caught.value.message
    notes = (await acme.files.create(file=("notes.txt", b"hello"), purpose="assistants")).id
    with pytest.raises(openai.UnprocessableEntityError):
        await acme.batches.create(
            input_file_id=notes, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert proxy.upstream.batches == {}


async def test_batches_are_their_creators_alone(proxy: Harness, clock: FakeClock) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    rival = proxy.sdk(await proxy.new_client("rival"))
    file_id = await uploaded(acme, batch_lines(2))
    await refused_unseen(
        proxy,
        rival.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"),
    )
    batch = await acme.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await refused_unseen(proxy, rival.batches.retrieve(batch.id))
    await refused_unseen(proxy, rival.batches.cancel(batch.id))
    proxy.upstream.run_batches()
    assert await ended_and_charged(proxy, clock) == 1
    done = await acme.batches.retrieve(batch.id)
    assert done.output_file_id is not None
    await refused_unseen(proxy, rival.files.content(done.output_file_id))
    assert [b.id async for b in acme.batches.list()] == [batch.id]
    listed = [b async for b in rival.batches.list()]
    assert listed == []
    assert [b.status async for b in acme.batches.list()] == ["completed"]  # as last seen upstream
    assert {e["client_id"] for e in await proxy.events()} == {"acme"}


@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_two_watchers_charge_each_line_once(make_proxy: Any, clock: FakeClock) -> None:
    first: Harness = await make_proxy()
    second: Harness = await make_proxy()
    acme = first.sdk(await first.new_client("acme", mode="cost", cost_limit="5.00"))
    file_id = await uploaded(acme, batch_lines(4))
    batch = await acme.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    first.upstream.run_batches()
    clock.advance(seconds=first.services.settings.watch_check_max_s + 1)

    # The first watcher charges every line, then dies before it is done with
    # the batch; the second charges it all again, and nothing twice.
    async def dies(object_id: str) -> None:
        raise StoreUnavailable("the process died here")

    first.services.objects.end_watch = dies  # type: ignore[method-assign]
    assert await watch_due(first.services) == 0
    assert await watch_due(second.services) == 0  # leased by the first one meanwhile
    clock.advance(seconds=first.services.settings.watch_check_max_s + 1)
    assert await watch_due(second.services) == 1
    events = await lines_charged(second, batch.id)
    assert [e["request_id"] for e in events] == [f"{batch.id}/line-{i}" for i in range(4)]
    await second.services.meter.feedback.close()
    await first.services.meter.feedback.close()
    assert usd((await second.status("acme"))["cost_used"]) == sum(usd(e["cost"]) for e in events)
    assert {usd(e["cost_usd"]) for e in events} == {usd(MINI_BATCH_LINE)}
    await second.assert_ledger_matches_counters()


async def test_a_running_batch_is_held_again_where_the_gate_lost_it(
    make_proxy: Any, backend: dict[str, str], clock: FakeClock
) -> None:
    first: Harness = await make_proxy()
    key = await first.new_client("acme", mode="cost", cost_limit="0.05")  # one batch fits, as above
    acme = first.sdk(key)
    held = await uploaded(acme, batch_lines(20, max_tokens=1000))
    other = await uploaded(acme, batch_lines(20, max_tokens=1000))
    await acme.batches.create(input_file_id=held, endpoint="/v1/chat/completions", completion_window="24h")
    if "redis_url" in backend:  # Redis lost everything
        redis = aioredis.Redis.from_url(backend["redis_url"])
        try:
            await redis.delete(*[k async for k in redis.scan_iter(match=f"{backend['redis_prefix']}*")])
        finally:
            await redis.aclose()
    # A process started later (on the embedded default, a restart: its gate
    # holds nothing) holds it again before its first call, before any look.
    second: Harness = await make_proxy()
    with pytest.raises(openai.RateLimitError):
        await second.sdk(key).batches.create(
            input_file_id=other, endpoint="/v1/chat/completions", completion_window="24h"
        )


async def test_an_ended_batch_is_charged_when_its_owner_looks_and_leaves_nothing_behind(
    proxy: Harness, clock: FakeClock
) -> None:
    acme = proxy.sdk(await proxy.new_client("acme", mode="cost", cost_limit="5.00"))
    status, _ = await proxy.admin(
        "PUT",
        "/admin/clients/acme/limits",
        {
            "limits": [
                {
                    "name": "mini",
                    "metric": "tokens",
                    "limit": 10**6,
                    "window": "daily",
                    "models": ["gpt-4o-mini"],
                }
            ]
        },
    )
    assert status == 200
    batch = await acme.batches.create(
        input_file_id=await uploaded(acme, batch_lines(3)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    proxy.upstream.run_batches()
    done = await acme.batches.retrieve(batch.id)  # no watcher has looked: charged now, then shown
    assert done.status == "completed" and done.output_file_id is not None
    assert len(await lines_charged(proxy, batch.id)) == 3
    # A line is recorded under the model its request named (the response
    # names its dated snapshot), so a limit on that model counts it.
    _, shown = await proxy.admin("GET", "/admin/clients/acme/limits")
    [limit] = shown["data"]
    assert (int(limit["used"]), int(limit["reserved"])) == (3 * (CHAT["prompt"] + CHAT["completion"]), 0)
    assert {e["model"] for e in await lines_charged(proxy, batch.id)} == {"gpt-4o-mini"}
    # Long after, nothing of it is left to charge: not its reservation, not its watch.
    clock.advance(seconds=proxy.services.settings.watch_hold_s + 3600)
    assert await sweep(proxy.services.meter) == 0
    assert await watch_due(proxy.services) == 0
    assert len(await proxy.events("acme")) == 4  # three lines and the batch's own free event


async def test_a_batchs_files_are_its_owners_once_its_lines_are_charged(
    proxy: Harness, clock: FakeClock
) -> None:
    acme = proxy.sdk(await proxy.new_client("acme"))
    batch = await acme.batches.create(
        input_file_id=await uploaded(acme, batch_lines(2)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    proxy.upstream.run_batches()
    output = proxy.upstream.batches[batch.id]["output_file_id"]
    # Ended upstream, not yet charged: its output cannot be deleted unread.
    await refused_unseen(proxy, acme.files.delete(output))
    assert await ended_and_charged(proxy, clock) == 1
    assert len((await acme.files.content(output)).content.splitlines()) == 2


async def test_a_restarted_process_counts_a_running_batch_on_its_limits(make_proxy: Any) -> None:
    first: Harness = await make_proxy()
    key = await first.new_client("acme")

    async def daily_tokens(limit: int) -> None:
        body = {"limits": [{"name": "daily", "metric": "tokens", "limit": limit, "window": "daily"}]}
        status, answer = await first.admin("PUT", "/admin/clients/acme/limits", body)
        assert status == 200, answer

    await daily_tokens(10**9)
    acme = first.sdk(key)
    await acme.batches.create(
        input_file_id=await uploaded(acme, batch_lines(20, max_tokens=1000)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    [watch] = await first.services.objects.all_watches()
    held = watch.reservation.tokens
    await daily_tokens(held + 1_000)  # room beside the batch for one call of 1,500 tokens, not two
    # A process started later (on the embedded default, a restart): the
    # batch's hold counts on the cap's counter it counts again from the ledger.
    second: Harness = await make_proxy()
    sdk = second.sdk(key)
    await sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.RateLimitError):
        await sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
