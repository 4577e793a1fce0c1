"""Admin and dashboard are sub-apps, each answering its errors in its own
form: the admin API in the spec's JSON shape, the dashboard as HTML pages of
its templates, while the gateway on the root app keeps OpenAI's shape. The
errors aiohttp raises itself (no route, a wrong method with its ``Allow``, a
body over the limit) come out in the shape of the sub-app they fall in."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from taximeter.proxy.dashboard import usage
from tests.support.harness import ADMIN_TOKEN, Harness

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def assert_error_shape(body: Any, status: int, code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert body["error"]["type"] == ("server_error" if status >= 500 else "invalid_request_error")


async def json_answer(
    proxy: Harness, method: str, path: str, data: bytes = b"", **headers: str
) -> tuple[int, Any, Any]:
    async with proxy.http.request(method, proxy.url + path, data=data, headers=headers) as resp:
        assert resp.content_type == "application/json", await resp.text()
        assert resp.headers["X-Taximeter-Request-Id"].startswith("req_")
        return resp.status, await resp.json(), resp.headers


async def html_answer(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, str, Any]:
    """A page, asked for in English."""
    kw.setdefault("headers", {"Accept-Language": "en"})
    async with http.request(method, url, allow_redirects=False, **kw) as resp:
        assert resp.content_type == "text/html", await resp.text()
        assert resp.headers["X-Taximeter-Request-Id"].startswith("req_")
        return resp.status, await resp.text(), resp.headers


@pytest.fixture
async def operator(proxy: Harness) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser logged in to the dashboard."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(proxy.url + "/dashboard/login") as resp:
            found = re.search(r'name="csrf" value="([^"]*)"', await resp.text())
        assert found is not None
        form = {"csrf": found.group(1), "token": ADMIN_TOKEN, "next": "/dashboard"}
        async with http.post(proxy.url + "/dashboard/login", data=form, allow_redirects=False) as resp:
            assert resp.status == 303
        yield http


def test_admin_dashboard_and_portal_are_mounted_as_sub_apps_and_the_gateway_is_not(proxy: Harness) -> None:
    mounted = {
        resource.get_info()["prefix"]: resource.get_info()["app"]
        for resource in proxy.app.router.resources()
        if isinstance(resource, web.PrefixedSubAppResource)
    }
    assert set(mounted) == {"/admin", "/dashboard", "/portal"}
    assert all(app.middlewares for app in mounted.values())
    own = {resource.canonical for resource in proxy.app.router.resources()} - set(mounted)
    assert own == {"/v1/{tail}", "/healthz", "/readyz", "/metrics", "/budget/status"}


@pytest.mark.parametrize("headers", [ADMIN, {}], ids=["token", "no-token"])
async def test_an_unknown_admin_route_is_a_json_404(proxy: Harness, headers: dict[str, str]) -> None:
    for path in ("/admin/nowhere", "/admin/clients/acme/nowhere", "/admin", "/admin/"):
        status, body, _ = await json_answer(proxy, "GET", path, **headers)
        assert status == 404, path
        assert_error_shape(body, 404, "not_found")


async def test_a_wrong_admin_method_is_a_json_405_with_allow(proxy: Harness) -> None:
    for headers in (ADMIN, {}):  # no route runs, so no token is asked for
        status, body, answer = await json_answer(proxy, "PATCH", "/admin/budgets/acme", **headers)
        assert status == 405
        assert_error_shape(body, 405, "method_not_allowed")
        assert answer["Allow"] == "DELETE,GET,HEAD,PUT"


async def test_an_oversized_admin_body_is_a_json_413(make_proxy: Callable[..., Awaitable[Harness]]) -> None:
    proxy = await make_proxy(max_body_bytes=1024)
    body = b'{"mode": "tokens", "token_limit": 5, "pad": "' + b"x" * 2000 + b'"}'
    status, answer, _ = await json_answer(
        proxy, "PUT", "/admin/budgets/acme", body, **ADMIN, **{"Content-Type": "application/json"}
    )
    assert status == 413
    assert_error_shape(answer, 413, "request_too_large")


async def test_the_admin_token_is_checked_for_every_route_but_the_document(proxy: Harness) -> None:
    for method, path in (("GET", "/admin/pricing"), ("POST", "/admin/clients"), ("GET", "/admin/budgets")):
        status, body, _ = await json_answer(proxy, method, path)
        assert status == 401, path
        assert_error_shape(body, 401, "admin_unauthorized")
    async with proxy.http.get(proxy.url + "/admin/openapi.json") as resp:
        assert resp.status == 200 and "/admin/clients" in (await resp.json())["paths"]


async def test_an_unknown_dashboard_page_is_an_html_404(
    proxy: Harness, operator: aiohttp.ClientSession
) -> None:
    for http in (proxy.http, operator):  # with or without a session
        for path in ("/dashboard/nowhere", "/dashboard/", "/dashboard/static/missing.css"):
            status, page, headers = await html_answer(http, "GET", proxy.url + path)
            assert status == 404, path
            assert "Page not found" in page and "<!doctype html>" in page
            assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    status, page, _ = await html_answer(operator, "GET", proxy.url + "/dashboard/clients/nobody")
    assert status == 404 and "nobody" in page  # raised by a page: its own message,
    assert "Log out" in page  # and the operator's navigation


async def test_a_wrong_dashboard_method_is_an_html_405_with_allow(proxy: Harness) -> None:
    status, page, headers = await html_answer(proxy.http, "DELETE", proxy.url + "/dashboard/login")
    assert status == 405 and "Not allowed" in page
    assert headers["Allow"] == "GET,HEAD,POST"


async def test_a_wrong_portal_method_is_an_html_405_with_allow_that_leads_nowhere(proxy: Harness) -> None:
    status, page, headers = await html_answer(proxy.http, "POST", proxy.url + "/portal/acme.1.x")
    assert status == 405 and "Not allowed" in page and headers["Allow"] == "GET,HEAD"
    assert '/dashboard"' not in page and "frame-ancestors 'none'" in headers["Content-Security-Policy"]


async def test_an_unexpected_dashboard_error_is_a_logged_html_500(
    proxy: Harness,
    operator: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("usage-SENTINEL exploded")

    monkeypatch.setattr(usage, "usage_view", broken)
    status, page, headers = await html_answer(operator, "GET", proxy.url + "/dashboard/usage")
    assert status == 500
    assert headers["X-Taximeter-Request-Id"] in page  # to find the log line by
    assert "SENTINEL" not in page and "Traceback" not in page
    [logged] = [r for r in caplog.records if r.getMessage() == "unhandled_error"]
    assert logged.exc_info is not None and logged.levelno == logging.ERROR


async def test_the_dashboard_without_its_store_is_an_html_503(
    make_proxy: Callable[..., Awaitable[Harness]],
) -> None:
    proxy = await make_proxy()  # not the checked fixture: this test closes the store
    await proxy.services.meter.store.close()
    cookies = {"taximeter_session": "x" * 40}  # a session to look up: the store is asked
    status, page, _ = await html_answer(proxy.http, "GET", proxy.url + "/dashboard", cookies=cookies)
    assert status == 503 and "Store unavailable" in page


async def test_gateway_and_root_errors_stay_in_openai_shape(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    bearer = {"Authorization": f"Bearer {key}"}
    status, body, _ = await json_answer(proxy, "POST", "/v1/fine_tuning/jobs", b"{}", **bearer)
    assert status == 404
    assert_error_shape(body, 404, "endpoint_not_metered")
    status, body, _ = await json_answer(proxy, "POST", "/v1/chat/completions", b"{}")
    assert status == 401
    assert_error_shape(body, 401, "invalid_api_key")
    status, body, _ = await json_answer(proxy, "POST", "/v1/embeddings", b"{not json", **bearer)
    assert status == 400
    assert_error_shape(body, 400, "invalid_json")
    status, body, headers = await json_answer(proxy, "DELETE", "/readyz")
    assert status == 405 and "GET" in headers["Allow"].split(",")
    assert_error_shape(body, 405, "method_not_allowed")
    for path in ("/nowhere", "/dashboardx", "/adminx"):  # near a prefix, not under it
        status, body, _ = await json_answer(proxy, "GET", path)
        assert status == 404, path
        assert_error_shape(body, 404, "not_found")
