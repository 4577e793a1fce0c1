"""/metrics: the spec's series with the ledger's values, and the optional
token. (One coherent scrape across two worker processes is in
tests/system/test_multiprocess.py.)"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.support.fake_upstream import CHAT, EMBEDDING_TOKENS
from tests.support.harness import Harness
from tests.support.metrics import samples, scrape, value


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
