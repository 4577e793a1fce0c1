"""/metrics: the spec's series with the ledger's values, the optional token,
and one coherent scrape across two worker processes."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_upstream import CHAT, EMBEDDING_TOKENS, FakeUpstream
from tests.support.harness import Harness
from tests.support.processes import Deployment
from tests.support.shared_services import REDIS_URL


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics", headers=headers) as resp:
        return resp.status, await resp.text()


async def test_scrape_matches_the_ledger(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=2 * (CHAT["prompt"] + CHAT["completion"]))
    client = proxy.sdk(key)
    await client.embeddings.create(model="text-embedding-3-small", input="x")
    await client.chat.completions.create(model="gpt-4o-2024-08-06", messages=[])
    await client.chat.completions.create(model="gpt-4o", messages=[])  # crosses 80%, 90%, 100%: paused
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o", messages=[])
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="no-such-model", messages=[])
    events = await proxy.events("acme")
    status, text = await scrape(proxy.url)
    assert status == 200
    m = samples(text)
    assert (
        value(m, "taximeter_requests_total", client="acme", api_type="chat", model="gpt-4o", status="200")
        == 2
    )
    assert (
        value(
            m,
            "taximeter_requests_total",
            client="acme",
            api_type="embeddings",
            model="text-embedding-3-small",
            status="200",
        )
        == 1
    )
    assert (
        value(m, "taximeter_tokens_total", client="acme", api_type="chat", model="gpt-4o", kind="input")
        == 2 * CHAT["prompt"]
    )
    assert (
        value(m, "taximeter_tokens_total", client="acme", api_type="chat", model="gpt-4o", kind="cached")
        == 2 * CHAT["cached"]
    )
    assert (
        value(
            m,
            "taximeter_tokens_total",
            client="acme",
            api_type="embeddings",
            model="text-embedding-3-small",
            kind="input",
        )
        == EMBEDDING_TOKENS
    )
    ledger_cost = sum(Decimal(e["cost"]) for e in events)
    assert value(m, "taximeter_cost_total", client="acme", currency="BRL") == pytest.approx(
        float(ledger_cost), rel=1e-12
    )
    assert value(m, "taximeter_budget_paused", client="acme") == 1
    used = (2 * (CHAT["prompt"] + CHAT["completion"]) + EMBEDDING_TOKENS) / (
        2 * (CHAT["prompt"] + CHAT["completion"])
    )
    assert value(m, "taximeter_budget_used_ratio", client="acme", metric="tokens") == pytest.approx(
        used, abs=1e-4
    )
    for threshold in ("0.8", "0.9", "1"):
        assert value(m, "taximeter_alerts_total", client="acme", threshold=threshold, metric="tokens") == 1
    assert value(m, "taximeter_rejections_total", client="acme", reason="token_limit") == 1
    assert value(m, "taximeter_rejections_total", client="acme", reason="model_not_priced") == 1
    assert (
        value(m, "taximeter_upstream_seconds_count") == 3
        and value(m, "taximeter_overhead_seconds_count") == 3
    )
    assert value(m, "taximeter_ledger_pending_events") == 0
    assert key not in text and "sk-upstream" not in text


async def test_unknown_model_is_labelled_other(make_proxy: Any) -> None:
    proxy: Harness = await make_proxy(unpriced_models="allow")
    key = await proxy.new_client("acme")
    await proxy.sdk(key).chat.completions.create(model="mystery-9", messages=[])
    _, text = await scrape(proxy.url)
    assert (
        value(
            samples(text),
            "taximeter_requests_total",
            client="acme",
            api_type="chat",
            model="other",
            status="200",
        )
        == 1
    )
    assert "mystery-9" not in text


async def test_metrics_token(make_proxy: Any) -> None:
    proxy: Harness = await make_proxy(metrics_token="metrics-SENTINEL")
    assert (await scrape(proxy.url))[0] == 401
    assert (await scrape(proxy.url, "wrong"))[0] == 401
    assert (await scrape(proxy.url, "metrics-SENTINEL"))[0] == 200


async def test_two_workers_give_one_coherent_scrape(
    aiohttp_server: Any, tmp_path: Path, pg_url: str, redis_prefix: str
) -> None:
    upstream = await aiohttp_server(FakeUpstream().app())
    served = Deployment(
        tmp_path,
        str(upstream.make_url("/v1")),
        database_url=pg_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        workers="2",
    )
    try:
        await served.cli("clients", "add", "acme")
        key = (await served.cli("keys", "create", "acme")).strip()
        await served.start()
        async with openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0) as client:
            await asyncio.gather(
                *(client.embeddings.create(model="text-embedding-3-small", input="x") for _ in range(40))
            )
        # Whichever worker answers the scrape, it counts every worker's calls.
        for _ in range(6):
            _, text = await scrape(served.url)
            m = samples(text)
            assert (
                value(
                    m,
                    "taximeter_requests_total",
                    client="acme",
                    api_type="embeddings",
                    model="text-embedding-3-small",
                    status="200",
                )
                == 40
            )
            assert (
                value(
                    m,
                    "taximeter_tokens_total",
                    client="acme",
                    api_type="embeddings",
                    model="text-embedding-3-small",
                    kind="input",
                )
                == 40 * EMBEDDING_TOKENS
            )
    finally:
        await served.stop()
