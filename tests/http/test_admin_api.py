"""The admin API: shapes of spec 7b, validation naming the field, nothing half-written."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from taximeter.proxy.services import OPERATIONS
from tests.support.clock import FakeClock
from tests.support.harness import ADMIN_TOKEN, Harness


async def test_clients_and_keys(proxy: Harness) -> None:
    status, client = await proxy.admin("POST", "/admin/clients", {"id": "acme", "name": "Acme Ltd"})
    assert status == 201 and client["created_at"].endswith("Z")
    assert {k: client[k] for k in ("id", "name", "currency", "markup", "models_allowed")} == {
        "id": "acme",
        "name": "Acme Ltd",
        "currency": "BRL",  # the server's
        "markup": "1",
        "models_allowed": None,
    }
    status, body = await proxy.admin("POST", "/admin/clients", {"id": "acme", "name": "Again"})
    assert status == 409 and body["error"]["param"] == "id"
    status, key = await proxy.admin("POST", "/admin/clients/acme/keys")
    assert status == 201 and key["key"].startswith("tm_") and len(key["key"]) >= 35
    assert key["prefix"] == key["key"][:12] and key["revoked"] is False
    status, keys = await proxy.admin("GET", "/admin/clients/acme/keys")
    assert keys["data"] == [{k: v for k, v in key.items() if k != "key"}]  # the key itself is shown once
    status, revoked = await proxy.admin("DELETE", f"/admin/keys/{key['prefix']}")
    assert (status, revoked["revoked"]) == (200, True)
    status, _ = await proxy.admin("DELETE", "/admin/keys/tm_nothere0")
    assert status == 404
    status, listing = await proxy.admin("GET", "/admin/clients")
    assert [c["id"] for c in listing["data"]] == ["acme"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"id": "Has Spaces", "name": "x"}, "id"),
        ({"id": "", "name": "x"}, "id"),
        ({"name": "no id"}, "id"),
        ({"id": "ok", "name": ""}, "name"),
        ({"id": "ok", "name": 5}, "name"),
    ],
)
async def test_bad_client_input_is_422_naming_the_field(
    proxy: Harness, body: dict[str, Any], param: str
) -> None:
    status, reply = await proxy.admin("POST", "/admin/clients", body)
    assert status == 422 and reply["error"]["param"] == param
    status, listing = await proxy.admin("GET", "/admin/clients")
    assert listing["data"] == []


async def test_budget_put_validation_writes_nothing(proxy: Harness) -> None:
    await proxy.new_client("acme")
    status, reply = await proxy.admin("PUT", "/admin/budgets/acme", {"mode": "both", "token_limit": 100})
    assert status == 422 and reply["error"]["param"] == "cost_limit"
    status, _ = await proxy.admin("GET", "/admin/budgets/acme")
    assert status == 404
    status, reply = await proxy.admin("PUT", "/admin/budgets/nobody", {"mode": "tokens", "token_limit": 1})
    assert status == 404
    async with proxy.http.put(
        f"{proxy.url}/admin/budgets/acme",
        data=b"{oops",
        headers={"Authorization": "Bearer admin-SENTINEL-token-91c3"},
    ) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"


async def test_budget_status_shape(proxy: Harness) -> None:
    await proxy.new_client(
        "acme",
        mode="cost",
        cost_limit=250.5,
        period="weekly",
        timezone="America/Sao_Paulo",
        pause_at_limit=False,
        alert_thresholds=[0.5, "0.9"],
    )
    status, body = await proxy.admin("GET", "/admin/budgets/acme")
    assert set(body) >= {
        "client_id",
        "mode",
        "period",
        "timezone",
        "currency",
        "token_limit",
        "cost_limit",
        "tokens_used",
        "cost_used",
        "tokens_percent",
        "cost_percent",
        "level",
        "paused",
        "pause_reason",
        "pause_at_limit",
        "alert_thresholds",
        "period_start",
        "next_reset_at",
        "spend_by_api_type",
    }
    assert (body["mode"], body["token_limit"], body["cost_limit"], body["tokens_percent"]) == (
        "cost",
        None,
        "250.5",
        None,
    )
    assert (body["cost_percent"], body["alert_thresholds"], body["pause_at_limit"]) == (
        0.0,
        [0.5, 0.9],
        False,
    )
    assert body["next_reset_at"] == "2026-03-16T03:00:00Z"  # Monday, local midnight in São Paulo
    status, listing = await proxy.admin("GET", "/admin/budgets")
    assert [b["client_id"] for b in listing["data"]] == ["acme"]
    status, _ = await proxy.admin("DELETE", "/admin/budgets/acme")
    assert status == 204
    status, _ = await proxy.admin("POST", "/admin/budgets/acme/pause")
    assert status == 404


async def test_usage_report_and_events_csv(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=10**9)
    client = proxy.sdk(key)
    await client.chat.completions.create(model="gpt-4o", messages=[], user="u1")
    await client.embeddings.create(model="text-embedding-3-small", input="x")
    await client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    status, report = await proxy.admin("GET", "/admin/usage?client_id=acme&group_by=api_type")
    assert status == 200 and report["currency"] == "BRL" and report["group_by"] == "api_type"
    assert [r["key"] for r in report["data"]] == ["chat", "embeddings", "tts"]
    events = await proxy.events("acme")
    for group in ("model", "day", "end_user"):
        status, other = await proxy.admin("GET", f"/admin/usage?client_id=acme&group_by={group}")
        assert sum(r["requests"] for r in other["data"]) == 3
    from decimal import Decimal

    assert sum(Decimal(r["cost"]) for r in report["data"]) == sum(Decimal(e["cost"]) for e in events)
    status, body = await proxy.admin("GET", "/admin/usage?group_by=color")
    assert status == 422 and body["error"]["param"] == "group_by"
    status, body = await proxy.admin("GET", "/admin/usage?from=yesterday")
    assert status == 422 and body["error"]["param"] == "from"
    status, text = await proxy.admin("GET", "/admin/usage/events?client_id=acme&format=csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["api_type"] for r in rows] == [e["api_type"] for e in events]
    assert list(rows[0]) == [
        "request_id",
        "client_id",
        "end_user",
        "conversation",
        "api_type",
        "model",
        "endpoint",
        "status",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "characters",
        "audio_seconds",
        "images",
        "cost_usd",
        "cost",
        "currency",
        "exchange_rate",
        "estimated",
        "created_at",
        "markup",
        "service_tier",
        "tool_calls",
        "batch_id",
        "unpriced",
        "price_source",
        "upstream",
        "latency_ms",
    ]
    assert (rows[0]["price_source"], rows[0]["upstream"], rows[0]["markup"]) == (
        "prices.toml",
        "default",
        "1",
    )
    status, body = await proxy.admin("GET", "/admin/usage/events?limit=0")
    assert status == 422 and body["error"]["param"] == "limit"


async def test_pricing_endpoints(proxy: Harness) -> None:
    status, body = await proxy.admin("GET", "/admin/pricing/gpt-4o-2024-08-06")
    assert (status, body["model"], body["input"], body["output"]) == (200, "gpt-4o", "2.50", "10.00")
    status, listing = await proxy.admin("GET", "/admin/pricing")
    assert "tts-1" in {p["model"] for p in listing["data"]}
    status, _ = await proxy.admin("GET", "/admin/pricing/unknown-model")
    assert status == 404


async def test_an_id_no_client_could_have_reads_as_missing(proxy: Harness) -> None:
    """Before: a NUL in a client_id query reached Postgres, which cannot hold
    it in text, and the admin API answered 503 (found by the schemathesis run)."""
    await proxy.new_client("acme")
    for path in ("/admin/usage/events?client_id=ac%00me", "/admin/usage/events?client_id=ac%0Ame&format=csv"):
        status, body = await proxy.admin("GET", path)
        assert status == 200 and (body == {"data": [], "next": None} or body.strip().count("\n") == 0), body
    status, body = await proxy.admin("GET", "/admin/usage?client_id=ac%00me")
    assert status == 200 and body["data"] == []
    status, body = await proxy.admin("GET", "/admin/budgets/ac%00me")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await proxy.admin("DELETE", "/admin/keys/tm_%00")
    assert status == 404


async def test_events_are_paged_by_a_cursor_and_csv_streams_every_row(
    proxy: Harness, clock: FakeClock
) -> None:
    key = await proxy.new_client("acme")
    other = await proxy.new_client("rival")
    client = proxy.sdk(key)
    for i in range(7):
        if i == 3:
            await proxy.sdk(other).embeddings.create(model="text-embedding-3-small", input="x")
        await client.embeddings.create(model="text-embedding-3-small", input="x", user=f"u{i}")
        if i % 2:
            clock.advance(seconds=1)  # some calls share a time: the request id orders them
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        path = "/admin/usage/events?client_id=acme&limit=3" + (f"&cursor={cursor}" if cursor else "")
        status, body = await proxy.admin("GET", path)
        assert status == 200 and len(body["data"]) <= 3
        seen += [e["end_user"] for e in body["data"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    status, body = await proxy.admin("GET", "/admin/usage/events?client_id=acme&limit=100")
    assert body["next"] is None
    # Each once, in the order of one long page: newest first, then by request id.
    assert seen == [e["end_user"] for e in body["data"]] and sorted(seen) == [f"u{i}" for i in range(7)]
    assert pages == 3
    status, body = await proxy.admin("GET", "/admin/usage/events?limit=100")
    assert len(body["data"]) == 8 and body["next"] is None
    crafted = (b"2026-03-10\nx", b"0001-01-01T00:00:00+01:00\nx", b"9999-12-31T23:59:59-05:00\nx")
    for bad in ("nonsense", "%00", "a" * 1500, *(base64.urlsafe_b64encode(c).decode() for c in crafted)):
        status, body = await proxy.admin("GET", f"/admin/usage/events?cursor={bad}")
        assert status == 422 and body["error"]["param"] == "cursor", bad

    status, text = await proxy.admin("GET", "/admin/usage/events?format=csv&limit=1")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 8  # every row: limit pages JSON only


async def test_a_long_csv_export_streams_in_pages(proxy: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    key = await proxy.new_client("acme")
    for i in range(25):
        await proxy.sdk(key).embeddings.create(model="text-embedding-3-small", input="x", user=f"u{i}")
    ops = proxy.app[OPERATIONS]
    pages: list[int] = []
    real = ops.all_events

    async def small_pages(client_id: str | None, page: int = 1000) -> AsyncIterator[list[Any]]:
        async for events in real(client_id, page=10):
            pages.append(len(events))
            yield events

    monkeypatch.setattr(ops, "all_events", small_pages)
    status, text = await proxy.admin("GET", "/admin/usage/events?format=csv&client_id=acme")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert status == 200 and pages == [10, 10, 5]
    status, body = await proxy.admin("GET", "/admin/usage/events?client_id=acme&limit=100")
    assert [r["end_user"] for r in rows] == [e["end_user"] for e in body["data"]]
    assert len(set(r["request_id"] for r in rows)) == 25


async def test_report_windows_at_the_ends_of_time_are_refused_not_crashed(proxy: Harness) -> None:
    for query in ("from=9999-12-31T01:00:00Z&to=9999-12-31T02:00:00Z", "from=0001-01-01T00:00:00%2B01:00"):
        status, body = await proxy.admin("GET", f"/admin/usage?{query}")
        assert status == 422 and body["error"]["param"] in ("from", "to"), (query, body)


async def test_a_csv_export_that_fails_midway_is_cut_short_never_complete_looking(
    proxy: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).embeddings.create(model="text-embedding-3-small", input="x")
    ops = proxy.app[OPERATIONS]
    real = ops.all_events

    async def failing(client_id: str | None, page: int = 1000) -> AsyncIterator[list[Any]]:
        async for events in real(client_id, page):
            yield events
        raise RuntimeError("the store went away")

    monkeypatch.setattr(ops, "all_events", failing)
    headers = {"Authorization": "Bearer " + ADMIN_TOKEN}
    async with proxy.http.get(f"{proxy.url}/admin/usage/events?format=csv", headers=headers) as resp:
        assert resp.status == 200 and resp.headers["X-Taximeter-Request-Id"].startswith("req_")
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # cut short: no end of the chunked body
    assert any(r.getMessage() == "csv_export_failed" for r in caplog.records)


async def test_the_list_of_budgets_gives_each_its_own_periods_spend(proxy: Harness, clock: FakeClock) -> None:
    """Read for every budget at once (grouped by period start), each budget's
    spend is what it says alone: its own calls since its own period began."""
    keys = {c: await proxy.new_client(c, mode="tokens", token_limit=10**9) for c in ("acme", "beta", "gamma")}
    for client_id, key in keys.items():
        await proxy.sdk(key).chat.completions.create(model="gpt-4o", messages=[])
        if client_id != "gamma":
            await proxy.sdk(key).embeddings.create(model="text-embedding-3-small", input="x")
    clock.advance(seconds=5)
    status, _ = await proxy.admin("POST", "/admin/budgets/beta/reset")  # beta counts from now
    assert status == 200
    clock.advance(seconds=5)
    await proxy.sdk(keys["beta"]).embeddings.create(model="text-embedding-3-small", input="x")
    status, listing = await proxy.admin("GET", "/admin/budgets")
    assert status == 200
    listed = {b["client_id"]: b["spend_by_api_type"] for b in listing["data"]}
    for client_id in keys:
        _, alone = await proxy.admin("GET", f"/admin/budgets/{client_id}")
        assert listed[client_id] == alone["spend_by_api_type"], client_id
    assert set(listed["acme"]) == {"chat", "embeddings"} and set(listed["beta"]) == {"embeddings"}
    assert set(listed["gamma"]) == {"chat"}


async def test_with_a_ledger_retention_nothing_may_count_from_the_first_event(make_proxy: Any) -> None:
    """Old events are dropped, so a lifetime budget or a limit with no window
    (counted again from the ledger when rebuilt) is refused, naming its field."""
    proxy = await make_proxy(ledger_retention_months=12)
    await proxy.new_client("acme")
    status, body = await proxy.admin(
        "PUT", "/admin/budgets/acme", {"mode": "tokens", "token_limit": 10, "period": "none"}
    )
    assert status == 422 and body["error"]["param"] == "period", body
    limits = [
        {"name": "live", "metric": "concurrent", "limit": 2},  # calls in flight: not counted from the ledger
        {"name": "ever", "metric": "tokens", "limit": 10},
    ]
    status, body = await proxy.admin("PUT", "/admin/clients/acme/limits", {"limits": limits})
    assert status == 422 and body["error"]["param"] == "limits[1].window", body
    status, _ = await proxy.admin(
        "PUT", "/admin/budgets/acme", {"mode": "tokens", "token_limit": 10, "period": "monthly"}
    )
    assert status == 200
    status, _ = await proxy.admin("PUT", "/admin/clients/acme/limits", {"limits": limits[:1]})
    assert status == 200
