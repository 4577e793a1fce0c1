"""The dashboard over HTTP, on both backends: login and its cookie, CSRF,
expired and ended sessions, forms with field errors, and what the pages show
after real SDK traffic. (The same flow in a real browser is in
tests/system/test_dashboard_browser.py.)"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from decimal import Decimal
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import openai
import pytest

from taximeter.proxy.dashboard import clients as dashboard_clients
from tests.support.browser import NBSP, Browser
from tests.support.clock import FakeClock
from tests.support.fake_upstream import CHAT, UPSTREAM_KEY
from tests.support.harness import ADMIN_TOKEN, Harness

CALL_TOKENS = CHAT["prompt"] + CHAT["completion"]  # 1500 per chat call
# One gpt-4o call in BRL at 5.0 per USD: (1000 * 2.50 + 200 * 1.25 + 300 * 10.00) / 1M * 5
CALL_BRL = Decimal("0.02875")


async def chat(proxy: Harness, key: str) -> None:
    await proxy.sdk(key).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])


async def test_pages_ask_for_a_login_whose_cookie_is_httponly_strict_and_expiring(
    proxy: Harness, browsers: Callable[[], Browser]
) -> None:
    browser = browsers()
    page = await browser.get("/dashboard/clients/acme?x=1")
    assert (page.status, page.location) == (303, "/dashboard/login?next=/dashboard/clients/acme%3Fx%3D1")

    await browser.get("/dashboard/login")
    page = await browser.post("/dashboard/login", {"token": "not-the-token"})
    assert page.status == 401 and "Wrong admin token" in page.text
    assert "taximeter_session" not in page.headers.getall("Set-Cookie", [""])[0]

    await browser.get("/dashboard/login?next=/dashboard/usage")
    async with browser.http.post(
        proxy.url + "/dashboard/login",
        data={"token": ADMIN_TOKEN, "next": "/dashboard/usage", "csrf": browser.last.csrf()},  # type: ignore[union-attr]
        allow_redirects=False,
    ) as resp:
        assert (resp.status, resp.headers["Location"]) == (303, "/dashboard/usage")
        cookies = [SimpleCookie(h) for h in resp.headers.getall("Set-Cookie")]
    session = next(c["taximeter_session"] for c in cookies if "taximeter_session" in c)
    assert session["httponly"] is True
    assert session["samesite"] == "Strict"
    assert session["max-age"] == str(8 * 3600)
    assert session["path"] == "/dashboard"
    page = await browser.get("/dashboard")
    assert page.status == 200 and "Clients" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


async def test_login_goes_only_to_dashboard_pages(browsers: Callable[[], Browser]) -> None:
    browser = browsers()
    for target in ("https://evil.example/", "//evil.example/dashboard", "/admin/clients", "/dashboard\\x"):
        await browser.get("/dashboard/login")
        page = await browser.post("/dashboard/login", {"token": ADMIN_TOKEN, "next": target})
        assert (page.status, page.location) == (303, "/dashboard"), target
        await browser.get("/dashboard")
        assert (await browser.post("/dashboard/logout")).status == 303


async def test_login_without_its_form_token_is_refused(
    proxy: Harness, browsers: Callable[[], Browser]
) -> None:
    browser = browsers()
    page = await browser.post("/dashboard/login", {"token": ADMIN_TOKEN})  # never saw the form
    assert page.status == 403 and "taximeter_session" not in str(page.headers.getall("Set-Cookie", []))
    assert (await browser.get("/dashboard")).status == 303


async def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(
    proxy: Harness, operator: Browser
) -> None:
    await proxy.new_client("acme", mode="tokens", token_limit=10_000)
    await operator.get("/dashboard/clients/acme")
    for csrf in ("", "0" * 64):
        page = await operator.post("/dashboard/clients/acme/budget/pause", csrf=csrf)
        assert page.status == 403 and "CSRF" in page.text
    page = await operator.post("/dashboard/clients", {"id": "intruder"}, csrf="")
    assert page.status == 403
    assert (await proxy.status("acme"))["paused"] is False
    assert [c["id"] for c in (await proxy.admin("GET", "/admin/clients"))[1]["data"]] == ["acme"]

    # A token from another session is no good either.
    other = Browser(proxy.url)
    try:
        await other.login()
        await other.get("/dashboard")
        page = await operator.post("/dashboard/clients/acme/budget/pause", csrf=other.last.csrf())  # type: ignore[union-attr]
        assert page.status == 403
    finally:
        await other.close()

    await operator.get("/dashboard/clients/acme")
    page = await operator.post("/dashboard/clients/acme/budget/pause")
    assert (page.status, page.location) == (303, "/dashboard/clients/acme?done=pause")
    assert (await proxy.status("acme"))["pause_reason"] == "manual"


async def test_an_expired_session_is_refused(proxy: Harness, operator: Browser, clock: FakeClock) -> None:
    await proxy.new_client("acme", mode="tokens", token_limit=10_000)
    page = await operator.get("/dashboard/clients/acme")
    assert page.status == 200
    clock.advance(hours=8, seconds=1)
    page = await operator.post("/dashboard/clients/acme/budget/pause")  # a valid token, a dead session
    assert page.status == 403 and "session has ended" in page.text
    assert (await proxy.status("acme"))["paused"] is False
    page = await operator.get("/dashboard/clients/acme")
    assert page.status == 303 and page.location.startswith("/dashboard/login")


async def test_logging_out_ends_the_session_for_every_copy_of_its_cookie(
    proxy: Harness, operator: Browser
) -> None:
    stolen = operator.session_cookie()
    await operator.get("/dashboard")
    page = await operator.post("/dashboard/logout")
    assert (page.status, page.location) == (303, "/dashboard/login?bye=1")
    assert (await operator.get("/dashboard")).status == 303

    async with (
        aiohttp.ClientSession(cookies={"taximeter_session": stolen}) as replay,
        replay.get(proxy.url + "/dashboard", allow_redirects=False) as resp,
    ):
        assert resp.status == 303


async def test_a_new_admin_token_ends_the_old_tokens_sessions(
    make_proxy: Callable[..., Awaitable[Harness]],
) -> None:
    first = await make_proxy()
    browser = Browser(first.url)
    try:
        await browser.login()
        assert (await browser.get("/dashboard")).status == 200
        cookie = browser.session_cookie()
        second = await make_proxy(admin_token="a-rotated-admin-token")  # the same store
        async with (
            aiohttp.ClientSession(cookies={"taximeter_session": cookie}) as http,
            http.get(second.url + "/dashboard", allow_redirects=False) as resp,
        ):
            assert resp.status == 303
    finally:
        await browser.close()


async def test_without_an_admin_token_the_dashboard_answers_403_with_a_hint(
    make_proxy: Callable[..., Awaitable[Harness]],
) -> None:
    proxy = await make_proxy(admin_token=None)
    for path in ("/dashboard", "/dashboard/login", "/dashboard/usage"):
        async with proxy.http.get(proxy.url + path, allow_redirects=False) as resp:
            assert resp.status == 403
            assert "TAXIMETER_ADMIN_TOKEN" in await resp.text()


async def test_clients_keys_and_budgets_are_made_in_forms_and_the_key_is_shown_once(
    proxy: Harness, operator: Browser
) -> None:
    await operator.get("/dashboard")
    page = await operator.post("/dashboard/clients", {"id": "Bad Id!", "name": "Acme"})
    assert page.status == 422 and 'id="id-error"' in page.text and 'value="Bad Id!"' in page.text
    page = await operator.post("/dashboard/clients", {"id": "acme", "name": "Acme Inc."})
    assert (page.status, page.location) == (303, "/dashboard/clients/acme?done=created")
    await operator.get("/dashboard")
    page = await operator.post("/dashboard/clients", {"id": "acme", "name": "Again"})
    assert page.status == 409 and "already exists" in page.text

    await operator.get("/dashboard/clients/acme")
    page = await operator.post("/dashboard/clients/acme/keys")
    assert page.status == 201
    key = re.search(r'id="new-key" class="key" value="(tm_[^"]+)"', page.text)
    assert key is not None
    await chat(proxy, key.group(1))  # the key works
    page = await operator.get("/dashboard/clients/acme")
    assert key.group(1) not in page.text  # shown once only
    assert key.group(1)[:12] in page.text  # its prefix is listed

    page = await operator.post(
        "/dashboard/clients/acme/budget",
        {
            "mode": "both",
            "token_limit": "10.000",
            "cost_limit": "450,00",
            "period": "weekly",
            "timezone": "America/Sao_Paulo",
            "alert_thresholds": "50, 100",
            "pause_at_limit": "on",
        },
    )
    assert (page.status, page.location) == (303, "/dashboard/clients/acme?done=budget")
    status = await proxy.status("acme")
    assert (status["token_limit"], Decimal(status["cost_limit"]), status["period"]) == (10_000, 450, "weekly")
    assert (status["timezone"], status["alert_thresholds"], status["pause_at_limit"]) == (
        "America/Sao_Paulo",
        [0.5, 1.0],
        True,
    )


async def test_a_bad_budget_form_shows_each_error_beside_its_field_and_writes_nothing(
    proxy: Harness, operator: Browser
) -> None:
    await proxy.new_client("acme", mode="tokens", token_limit=10_000)
    await operator.get("/dashboard/clients/acme")
    page = await operator.post(
        "/dashboard/clients/acme/budget",
        {
            "mode": "both",
            "token_limit": "many",
            "cost_limit": "-5",
            "timezone": "Mars/Olympus",
            "period": "daily",
        },
    )
    assert page.status == 422
    for name in ("token_limit", "cost_limit", "timezone"):
        # The message sits right after its input, inside the same field.
        assert re.search(rf'id="{name}"[^>]*>\s*<p class="field-error" id="{name}-error"', page.text), name
    assert "unknown timezone" in page.text and 'value="Mars/Olympus"' in page.text  # the input is kept
    status = await proxy.status("acme")
    assert (status["mode"], status["token_limit"], status["timezone"]) == ("tokens", 10_000, "UTC")


async def test_cards_show_figures_levels_and_pauses_after_sdk_traffic(
    proxy: Harness, operator: Browser, clock: FakeClock
) -> None:
    quiet = await proxy.new_client("quiet", mode="cost", cost_limit="500")
    busy = await proxy.new_client(
        "busy", mode="both", token_limit=5 * CALL_TOKENS, cost_limit="500", period="monthly"
    )
    await proxy.new_client("nobudget")
    await chat(proxy, quiet)
    for _ in range(4):
        await chat(proxy, busy)  # 80% of the tokens

    page = await operator.get("/dashboard")
    order = re.findall(r'data-client="([^"]+)" data-level="([^"]+)"', page.text)
    assert order == [("busy", "warning"), ("quiet", "ok"), ("nobudget", "ok")]
    text = page.plain()
    assert "6,000 / 7,500" in text and "80.0%" in text
    spent = 4 * CALL_BRL
    assert f"R${spent.quantize(Decimal('0.01'))} / R$500.00" in text
    assert "resets 4/1/26" in text  # the first of next month, in the budget's timezone
    # 6,000 tokens in the 9 days 15 hours since the 1st: 19,324 by the month's
    # end at this pace, past 7,500 on the 13th at 00:45 (6,000 + 1,500 more).
    assert "and 19,324 tokens by the period" in text and "runs out 3/13/26, 12:45 AM (UTC)" in text

    await chat(proxy, busy)  # 100%: paused at the limit
    with pytest.raises(openai.RateLimitError):
        await chat(proxy, busy)
    page = await operator.get("/dashboard?q=BUS")
    assert re.findall(r'data-client="([^"]+)" data-level="([^"]+)"', page.text) == [("busy", "exceeded")]
    assert "paused · token limit" in page.plain()

    clock.advance(seconds=1)  # the reset comes after the calls, not at their instant
    await operator.get("/dashboard/clients/busy")
    page = await operator.post("/dashboard/clients/busy/budget/reset")
    assert page.status == 303
    page = await operator.get(page.location)
    assert "Budget reset" in page.text and 'data-level="ok"' in page.text and "paused ·" not in page.text
    await chat(proxy, busy)
    await proxy.assert_ledger_matches_counters()


async def test_the_client_page_lists_events_and_revokes_keys(proxy: Harness, operator: Browser) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=100_000)
    await chat(proxy, key)
    page = await operator.get("/dashboard/clients/acme")
    events = re.search(r'<table class="events">.*?</table>', page.text, re.S)
    assert events is not None
    row = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", events.group(0))).replace(NBSP, " ")
    assert "chat gpt-4o 200 1,200 300" in row
    assert f"R${CALL_BRL}" in row  # every digit of one call's cost

    prefix = key[:12]
    page = await operator.post(f"/dashboard/clients/acme/keys/{prefix}/revoke")
    assert (page.status, page.location) == (303, "/dashboard/clients/acme?done=revoked")
    with pytest.raises(openai.AuthenticationError):
        await chat(proxy, key)
    await operator.get("/dashboard/clients/acme")
    page = await operator.post(f"/dashboard/clients/other/keys/{prefix}/revoke")
    assert page.status == 404


async def test_the_usage_page_charts_thirty_days_by_model_and_api_type(
    proxy: Harness, operator: Browser
) -> None:
    key = await proxy.new_client("acme")
    for _ in range(3):
        await chat(proxy, key)
    await proxy.sdk(key).embeddings.create(model="text-embedding-3-small", input="hello")
    page = await operator.get("/dashboard/usage?client_id=acme")
    assert page.status == 200
    assert page.text.count('class="stack"') == 30  # a column a day, stacked by api_type
    assert len(re.findall(r'class="column series-chat"', page.text)) == 1  # all on one day
    assert len(re.findall(r'class="column series-embeddings"', page.text)) == 1
    text = page.plain()
    assert "over 4 requests" in text
    assert re.search(r"gpt-4o 3 3,600 900 R\$0\.09", text)  # 3 calls of 1,200 in, 300 out
    assert re.search(r"chat 3 .* embeddings 1 ", text)
    assert "<script" not in page.text.replace(
        '<script src="/dashboard/static/dashboard.js" defer></script>', ""
    )
    assert "http://" not in page.text and "https://" not in page.text.replace("http://www.w3.org", "")
    assert (await operator.get("/dashboard/usage?client_id=nobody")).status == 404


async def test_the_usage_page_of_clients_paying_in_two_currencies_is_in_dollars(
    proxy: Harness, operator: Browser
) -> None:
    euro_key, real_key = await proxy.new_client("euro"), await proxy.new_client("real")
    await proxy.admin("PUT", "/admin/rates/EUR", {"rate": "0.92"})
    await proxy.admin("PATCH", "/admin/clients/euro", {"currency": "EUR"})
    await chat(proxy, euro_key)
    await chat(proxy, real_key)
    # Two calls of gpt-4o at list price: 2 x (1000 x 2.50 + 200 x 1.25 + 300 x 10) / 1M = US$ 0.0115.
    text = (await operator.get("/dashboard/usage")).plain()
    assert re.search(r"gpt-4o 2 2,400 600 \$0\.01", text), text
    text = (await operator.get("/dashboard/usage?client_id=euro")).plain()
    # One call at 0.92 EUR per USD: 0.00575 x 0.92 = EUR 0.00529, under a cent: shown to two digits.
    assert re.search(r"gpt-4o 1 1,200 300 €0\.0053", text), text


async def test_no_page_shows_a_secret(proxy: Harness, operator: Browser) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=100_000)
    await chat(proxy, key)
    pages = [
        await operator.get(path)
        for path in ("/dashboard", "/dashboard/clients/acme", "/dashboard/usage", "/dashboard/clients/nobody")
    ]
    pages.append(
        await operator.post("/dashboard/clients/acme/budget", {"mode": "tokens"}, csrf=pages[1].csrf())
    )
    anonymous = Browser(proxy.url)
    try:
        pages.append(await anonymous.get("/dashboard/login"))
        pages.append(await anonymous.post("/dashboard/login", {"token": "guess"}))
    finally:
        await anonymous.close()
    for page in pages:
        for secret in (ADMIN_TOKEN, UPSTREAM_KEY, key):
            assert secret not in page.text


async def test_static_files_are_served_and_nothing_else(operator: Browser) -> None:
    css = await operator.get("/dashboard/static/dashboard.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    assert (await operator.get("/dashboard/static/..%2Fdashboard.py")).status == 404
    assert (await operator.get("/dashboard/static/missing.js")).status == 404


async def test_a_form_over_the_body_limit_is_a_page_not_json(make_proxy: Any) -> None:
    proxy = await make_proxy(max_body_bytes=1024)
    browser = Browser(proxy.url)
    try:
        assert (await browser.login()).status == 303
        await browser.get("/dashboard")
        page = await browser.post("/dashboard/clients", {"id": "acme", "name": "x" * 2000})
        assert page.status == 413 and page.headers["Content-Type"].startswith("text/html")
        await browser.get("/dashboard/login")
        page = await browser.post("/dashboard/login", {"token": "x" * 2000})
        assert page.status == 413 and page.headers["Content-Type"].startswith("text/html")
        assert "too large" in page.plain()
    finally:
        await browser.close()


async def test_the_client_page_shows_and_edits_limits_with_errors_beside_their_fields(
    proxy: Harness, operator: Browser
) -> None:
    key = await proxy.new_client("acme")
    await operator.get("/dashboard/clients/acme")
    rows = {
        "limit-0-name": "per-user",
        "limit-0-metric": "cost",
        "limit-0-limit": "2.50",
        "limit-0-window": "daily",
        "limit-0-per": "end_user",
        "limit-0-models": "",
        "limit-1-name": "rpm",
        "limit-1-metric": "requests",
        "limit-1-limit": "abc",
        "limit-1-window": "minute",
        "limit-1-per": "client",
        "limit-1-models": "gpt-4o*, gpt-5*",
        "limit-2-name": "",
    }
    page = await operator.post("/dashboard/clients/acme/limits", rows)
    assert page.status == 422 and 'id="limits[1].limit-error"' in page.text
    assert 'value="abc"' in page.text  # the rows come back as sent
    _, shown = await proxy.admin("GET", "/admin/clients/acme/limits")
    assert shown["data"] == []  # nothing half-written
    page = await operator.post("/dashboard/clients/acme/limits", {**rows, "limit-1-limit": "60"})
    assert (page.status, page.location) == (303, "/dashboard/clients/acme?done=limits")
    await chat(proxy, key)
    page = await operator.get("/dashboard/clients/acme")
    assert 'data-limit="per-user"' in page.text and 'data-limit="rpm"' in page.text
    assert "1 / 60" in page.text  # the call counted on the request limit
    overview = await operator.get("/dashboard")
    assert (
        'class="binding-limit"' in overview.text and "limit rpm (per minute)" in overview.text
    )  # 1/60 > 0/2.5
    _, shown = await proxy.admin("GET", "/admin/clients/acme/limits")
    assert [(x["name"], x["limit"], x["models"]) for x in shown["data"]] == [
        ("per-user", "2.5", None),
        ("rpm", 60, ["gpt-4o*", "gpt-5*"]),
    ]


async def test_the_overview_shows_a_page_of_cards_at_a_time_closest_to_a_limit_first(
    proxy: Harness, operator: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard_clients, "OVERVIEW_PAGE", 2)
    for name, calls_allowed in (("half", 2), ("quarter", 4), ("tenth", 10)):
        key = await proxy.new_client(name, mode="tokens", token_limit=calls_allowed * CALL_TOKENS)
        await chat(proxy, key)
    await proxy.new_client("plain-a")
    await proxy.new_client("plain-b")

    def shown(page: Any) -> list[str]:
        return re.findall(r'data-client="([^"]+)"', page.text)

    def links(page: Any) -> dict[str, str]:
        return {
            rel: href.replace("&amp;", "&")
            for href, rel in re.findall(r'href="([^"]+)" rel="(prev|next)"', page.text)
        }

    first = await operator.get("/dashboard")
    assert shown(first) == ["half", "quarter"]
    assert "1\N{EN DASH}2 of 5 clients" in first.plain() and "Page 1 of 3" in first.plain()
    assert links(first) == {"next": "/dashboard?page=2"}
    second = await operator.get(links(first)["next"])
    assert shown(second) == ["tenth", "plain-a"]
    assert links(second) == {"prev": "/dashboard?page=1", "next": "/dashboard?page=3"}
    last = await operator.get("/dashboard?page=3")
    assert shown(last) == ["plain-b"] and "5\N{EN DASH}5 of 5 clients" in last.plain()
    assert links(last) == {"prev": "/dashboard?page=2"}
    assert shown(await operator.get("/dashboard?page=99")) == ["plain-b"]  # past the end: the last page
    for bad in ("0", "-1", "abc", "1" * 40, "\N{SUPERSCRIPT TWO}"):
        assert shown(await operator.get(f"/dashboard?page={bad}")) == ["half", "quarter"]
    # The spend on a card of a later page is its own; a filter keeps its pages.
    assert f"R${CALL_BRL.quantize(Decimal('0.01'))}" in second.plain()
    filtered = await operator.get("/dashboard?q=L&page=2")  # half, plain-a, plain-b
    assert shown(filtered) == ["plain-b"] and links(filtered) == {"prev": "/dashboard?q=L&page=1"}
