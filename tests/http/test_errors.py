"""Every failure path answers in OpenAI's error shape with the spec's status
and code, leaves the ledger consistent, and shows no secret."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from tests.support.clock import FakeClock
from tests.support.fake_upstream import UPSTREAM_KEY
from tests.support.harness import ADMIN_TOKEN, Harness


def assert_error_shape(body: Any, code: str, type_: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert (body["error"]["code"], body["error"]["type"]) == (code, type_)
    assert body["error"]["message"]


async def raw_post(
    proxy: Harness, path: str, data: bytes, key: str | None, **headers: str
) -> tuple[int, Any, Any]:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    async with proxy.http.post(f"{proxy.url}{path}", data=data, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_missing_and_unknown_keys(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    for bad in (None, "sk-not-ours", "tm_" + "x" * 40, key[:-1] + ("A" if key[-1] != "A" else "B")):
        status, body, headers = await raw_post(proxy, "/v1/chat/completions", b"{}", bad)
        assert status == 401 and "X-Taximeter-Request-Id" in headers
        assert_error_shape(body, "invalid_api_key", "invalid_request_error")
    with pytest.raises(openai.AuthenticationError) as caught:
        await proxy.sdk("tm_" + "y" * 40).models.list()
    assert caught.value.code == "invalid_api_key"
    assert proxy.upstream.received == []


async def test_revoked_key_is_refused(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    status, _ = await proxy.admin("DELETE", f"/admin/keys/{key[:12]}")
    assert status == 200
    status, body, _ = await raw_post(proxy, "/v1/embeddings", b"{}", key)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


async def test_malformed_json(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    for data in (b"{not json", b"[1, 2]"):
        status, body, _ = await raw_post(proxy, "/v1/chat/completions", data, key)
        assert status == 400
        assert_error_shape(body, "invalid_json", "invalid_request_error")
    assert proxy.upstream.received == []


async def test_oversized_body(make_proxy: Any) -> None:
    proxy = await make_proxy(max_body_bytes=1024)
    key = await proxy.new_client("acme")
    status, body, _ = await raw_post(proxy, "/v1/embeddings", b'{"input": "' + b"x" * 2000 + b'"}', key)
    assert status == 413
    assert_error_shape(body, "request_too_large", "invalid_request_error")


async def test_unknown_path_is_not_forwarded(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    status, body, _ = await raw_post(proxy, "/v1/fine_tuning/jobs", b"{}", key)
    assert status == 404
    assert_error_shape(body, "endpoint_not_metered", "invalid_request_error")
    assert proxy.upstream.received == []


async def test_operator_listed_pass_through_path(make_proxy: Any) -> None:
    proxy = await make_proxy(passthrough_paths=["/v1/audio/voices"])
    key = await proxy.new_client("acme")
    headers = {"Authorization": f"Bearer {key}"}
    async with proxy.http.get(f"{proxy.url}/v1/audio/voices", headers=headers) as resp:
        assert resp.status == 404  # forwarded: the fake upstream has no /v1/audio/voices
        assert (await resp.json())["error"]["code"] == "unknown_url"
    assert [r.path for r in proxy.upstream.received] == ["/v1/audio/voices"]


async def test_unpriced_model_is_rejected_by_default(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    with pytest.raises(openai.BadRequestError) as caught:
        await proxy.sdk(key).chat.completions.create(model="mystery-model-9", messages=[])
    assert caught.value.code == "model_not_priced"
    assert proxy.upstream.received == [] and await proxy.events("acme") == []


async def test_unpriced_model_allowed_is_recorded_at_zero_and_flagged(make_proxy: Any) -> None:
    proxy = await make_proxy(unpriced_models="allow")
    key = await proxy.new_client("acme")
    await proxy.sdk(key).chat.completions.create(model="mystery-model-9", messages=[])
    [event] = await proxy.events("acme")
    assert (event["cost_usd"], event["cost"], event["unpriced"], event["input_tokens"]) == (
        "0",
        "0",
        True,
        1200,
    )


async def test_upstream_error_passes_through_unchanged_and_is_recorded(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=10_000)
    proxy.upstream.fail_status = 500
    with pytest.raises(openai.InternalServerError) as caught:
        await proxy.sdk(key).chat.completions.create(model="gpt-4o", messages=[])
    assert caught.value.status_code == 500
    assert caught.value.body == {
        "message": "The server had an error processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    [event] = await proxy.events("acme")
    assert (event["status"], event["cost_usd"], event["input_tokens"]) == (500, "0", 0)
    proxy.upstream.fail_status = 429
    with pytest.raises(openai.RateLimitError):
        await proxy.sdk(key).chat.completions.create(model="gpt-4o", messages=[])


async def test_unreachable_upstream(make_proxy: Any) -> None:
    proxy = await make_proxy(upstream_url="http://127.0.0.1:9/v1", upstream_connect_timeout_s=2)
    key = await proxy.new_client("acme")
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.sdk(key).chat.completions.create(model="gpt-4o", messages=[])
    assert caught.value.status_code == 502 and caught.value.code == "upstream_unavailable"
    [event] = await proxy.events("acme")
    assert (event["status"], event["cost"]) == (502, "0")


async def test_upstream_timeout(make_proxy: Any, upstream: Any) -> None:
    upstream.delay_s = 2.0
    proxy = await make_proxy(upstream_timeout_s=0.2)
    key = await proxy.new_client("acme")
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.sdk(key).embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.status_code == 504 and caught.value.code == "upstream_timeout"


async def test_store_down_answers_503(make_proxy: Any) -> None:
    proxy = await make_proxy()  # not the checked fixture: this test closes the store
    key = await proxy.new_client("acme")
    await proxy.services.meter.store.close()
    status, body, _ = await raw_post(proxy, "/v1/embeddings", b"{}", key)
    assert status == 503
    assert_error_shape(body, "metering_unavailable", "server_error")
    async with proxy.http.get(f"{proxy.url}/readyz") as resp:
        assert resp.status == 503 and (await resp.json())["store"] == "unavailable"


async def test_admin_api_requires_the_token(proxy: Harness, make_proxy: Any) -> None:
    status, body = await proxy.admin("GET", "/admin/clients", token="wrong")
    assert status == 401 and body["error"]["code"] == "admin_unauthorized"
    no_admin = await make_proxy(admin_token=None)
    status, body = await no_admin.admin("GET", "/admin/clients")
    assert status == 403 and "admin_token" in body["error"]["message"]


async def test_no_secret_in_logs_or_responses(
    proxy: Harness, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    caplog.set_level(logging.DEBUG)
    key = await proxy.new_client("acme", mode="tokens", token_limit=1)
    client = proxy.sdk(key)
    await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "secret prompt"}]
    )
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o", messages=[])
    clock.advance(seconds=1)
    await proxy.admin("POST", "/admin/budgets/acme/reset")
    async with proxy.http.get(
        f"{proxy.url}/admin/usage/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as r:
        responses = await r.text()
    async with proxy.http.get(
        f"{proxy.url}/admin/clients/acme/keys", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as r:
        responses += await r.text()
    # Everything the proxy's side logs (the SDK's own debug log is the test client's).
    server_side = [r for r in caplog.records if not r.name.startswith(("openai", "httpx", "httpcore"))]
    logs = "\n".join(f"{rec.getMessage()} {rec.__dict__}" for rec in server_side)
    assert logs, "nothing was logged"
    for secret in (key, UPSTREAM_KEY, ADMIN_TOKEN, "secret prompt"):
        assert secret not in logs
        assert secret not in responses
    assert key[:12] in responses  # the display prefix is shown


async def test_client_disconnect_mid_stream_is_recorded_as_estimated(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=10**6)
    proxy.upstream.gate = asyncio.Event()
    body = (
        b'{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "'
        + b"w" * 400
        + b'"}]}'
    )
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        resp = await session.post(
            f"{proxy.url}/v1/chat/completions", data=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
        resp.close()  # the client goes away mid-stream
    proxy.upstream.gate.set()
    [event] = await proxy.events_once_recorded("acme", timeout_s=2)
    assert event["estimated"] is True and event["status"] == 499
    # Charged as reserved, never less: every string of the request at about 4
    # characters a token ("gpt-4o" 2, "user" 1, the prompt 100), and the default
    # output reservation, as the call set no max_tokens.
    assert event["input_tokens"] == 2 + 1 + 100
    assert event["output_tokens"] == 4096
    assert event["cost_usd"] != "0"


async def test_upstream_cut_mid_stream_is_estimated(proxy: Harness) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=10**6)
    proxy.upstream.cut_after = 3
    stream = await proxy.sdk(key).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hello, how are you today?"}], stream=True
    )
    received = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):  # the SDK surfaces the broken stream
        async for chunk in stream:
            received.append(chunk)
    [event] = await proxy.events("acme")
    assert (event["estimated"], event["status"]) == (True, 502)
    # Cut off: charged as reserved ("gpt-4o" 2, "user" 1, the prompt 7 tokens; the
    # default output reservation), not the 2 tokens delivered before the cut.
    assert event["input_tokens"] == 10 and event["output_tokens"] == 4096
    status = await proxy.status("acme")
    assert status["tokens_used"] == 4106


async def raw_request(proxy: Harness, method: str, path: str, data: bytes = b"", **headers: str) -> Any:
    async with proxy.http.request(method, f"{proxy.url}{path}", data=data, headers=headers) as resp:
        assert resp.content_type == "application/json", await resp.text()
        assert "X-Taximeter-Request-Id" in resp.headers
        return resp.status, await resp.json(), resp.headers


async def test_aiohttp_own_413_is_in_the_error_shape(make_proxy: Any) -> None:
    proxy = await make_proxy(max_body_bytes=1024)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    body = b'{"id": "acme", "name": "' + b"x" * 2000 + b'"}'
    status, answer, _ = await raw_request(proxy, "POST", "/admin/clients", body, **admin)
    assert status == 413
    assert_error_shape(answer, "request_too_large", "invalid_request_error")
    status, _ = await proxy.admin("GET", "/admin/clients/acme")
    assert status == 404  # nothing was written
    key = await proxy.new_client("acme")
    status, answer, _ = await raw_request(
        proxy,
        "POST",
        "/v1/embeddings",
        body,
        Authorization=f"Bearer {key}",
        **{"Content-Type": "application/json"},
    )
    assert status == 413
    assert_error_shape(answer, "request_too_large", "invalid_request_error")


async def test_a_wrong_method_is_405_in_the_error_shape_with_allow(proxy: Harness) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    status, answer, headers = await raw_request(proxy, "DELETE", "/admin/clients", **admin)
    assert status == 405
    assert_error_shape(answer, "method_not_allowed", "invalid_request_error")
    assert set(headers["Allow"].split(",")) >= {"GET", "POST"}
    key = await proxy.new_client("acme")
    status, answer, headers = await raw_request(
        proxy, "POST", "/budget/status", Authorization=f"Bearer {key}"
    )
    assert status == 405
    assert_error_shape(answer, "method_not_allowed", "invalid_request_error")
    assert "GET" in headers["Allow"].split(",")
    status, answer, headers = await raw_request(proxy, "PUT", "/healthz")
    assert (status, answer["error"]["code"]) == (405, "method_not_allowed") and "GET" in headers["Allow"]


async def test_an_unknown_path_is_404_in_the_error_shape(proxy: Harness) -> None:
    for path in ("/nowhere", "/admin/nowhere", "/v2/chat/completions"):
        status, answer, _ = await raw_request(proxy, "GET", path, Authorization=f"Bearer {ADMIN_TOKEN}")
        assert status == 404
        assert_error_shape(answer, "not_found", "invalid_request_error")
