"""The tenant portal over HTTP, on both backends: links made by the admin API
and the dashboard, what a page shows (one client's own figures, in its
language, nothing of the operator's), expiry, revocation, tampering, framing.
And the pages in Portuguese: picked by Accept-Language, the switch, or the
``locale`` setting, with numbers and money in that locale."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from taximeter.proxy.services import OPERATIONS
from tests.http.test_changes_elsewhere import cli_on
from tests.http.test_dashboard import CALL_BRL, chat
from tests.support.browser import NBSP, Browser
from tests.support.clock import FakeClock
from tests.support.harness import Harness


def plain(html: str) -> str:
    text = re.sub(r"<[^>]+>", " ", html).replace(NBSP, " ")
    return re.sub(r"\s+", " ", text)


async def link(proxy: Harness, client_id: str, body: Any = None) -> dict[str, Any]:
    status, made = await proxy.admin("POST", f"/admin/clients/{client_id}/portal-links", body or {})
    assert status == 201, made
    return dict(made)


async def open_link(url: str, **headers: str) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.text(), resp.headers


async def test_a_link_opens_one_clients_own_page_and_nothing_of_the_operators(
    proxy: Harness, clock: FakeClock
) -> None:
    key = await proxy.new_client("acme", mode="cost", cost_limit="100")
    other = await proxy.new_client("rival", mode="cost", cost_limit="100")
    await proxy.admin(
        "PUT",
        "/admin/clients/acme/limits",
        {
            "limits": [
                {"name": "per-user", "metric": "requests", "limit": 50, "window": "daily", "per": "end_user"},
            ]
        },
    )
    await proxy.sdk(key).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], user="+5511999990000"
    )
    await chat(proxy, key)
    await proxy.sdk(key).embeddings.create(model="text-embedding-3-small", input="hello")
    await proxy.sdk(other).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], user="rival-user"
    )

    made = await link(proxy, "acme", {"expires_in_s": 3600})
    assert made["url"].startswith(f"{proxy.url}/portal/acme.")
    assert made["expires_at"] == "2026-03-10T16:00:00Z"  # the fake clock's 15:00 plus an hour
    status, html, headers = await open_link(made["url"], **{"Accept-Language": "en"})
    assert status == 200, html
    text = plain(html)
    assert "Acme" in text and 'data-client="acme"' in html
    assert "+5511999990000" in text  # its end user, in the chart and the events
    assert "per-user" in text  # its limits
    assert "gpt-4o" in text and "text-embedding-3-small" in text
    assert html.count('class="stack"') == 30 and 'class="column series-embeddings"' in html
    assert f"R${CALL_BRL}" in text  # one call's cost, every digit, in the client's currency
    # Nothing of another client, of the operator or of a key.
    for secret_or_other in (
        "rival",
        "gpt-4o-mini",
        key[:12],
        "tm_",
        "cost_usd",
        "markup",
        "/dashboard/clients",
    ):
        assert secret_or_other not in html, secret_or_other
    assert "<form" not in html  # read only
    assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"  # no origin listed: no one frames it


async def test_a_client_that_changed_currency_never_sees_a_list_price(proxy: Harness) -> None:
    key = await proxy.new_client("acme")  # no budget: its currency may change any time
    assert (await proxy.admin("PATCH", "/admin/clients/acme", {"markup": "2"}))[0] == 200
    await chat(proxy, key)  # billed in BRL: list price x 5 x 2
    assert (await proxy.admin("PATCH", "/admin/clients/acme", {"currency": "USD"}))[0] == 200
    await chat(proxy, key)  # billed in USD: list price x 2
    url = (await link(proxy, "acme"))["url"]
    status, html, _ = await open_link(url, **{"Accept-Language": "en"})
    assert status == 200
    text = plain(html)
    list_usd = CALL_BRL / 5
    assert f"${(list_usd * 2).normalize()}" in text  # the USD call as billed, every digit, in the events
    assert "One call billed in another currency than USD is not shown" in text
    # The reports show what was billed in USD: 0.0115 (two significant digits
    # below a cent is never the case here), never the list price 0.00575.
    assert re.search(r"gpt-4o 1 1,200 300 \$0\.01 ", text), text
    assert "0.0058" not in text and "0.00575" not in text


async def test_links_expire_can_be_revoked_and_cannot_be_forged(proxy: Harness, clock: FakeClock) -> None:
    await proxy.new_client("acme", mode="tokens", token_limit=1000)
    await proxy.new_client("rival", mode="tokens", token_limit=1000)
    first = (await link(proxy, "acme", {"expires_in_s": 120}))["url"]
    second = (await link(proxy, "acme"))["url"]  # a day, by default
    assert (await open_link(first))[0] == 200

    token = first.rsplit("/", 1)[1]
    client_id, expires, signature = token.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    forged = [
        f"{client_id}.{int(expires) + 86_400}.{signature}",  # a later expiry, same signature
        f"rival.{expires}.{signature}",  # another client's page with this link's signature
        f"{client_id}.{expires}.{flipped}",
        f"{client_id}.{expires}",
        "nobody.99999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "x" * 5000,
        "..%2F..%2Fadmin",
    ]
    for bad in forged:
        status, html, _ = await open_link(f"{proxy.url}/portal/{bad}", **{"Accept-Language": "en"})
        assert status == 404, bad
        assert "not valid" in html and "Acme" not in html

    clock.advance(seconds=121)
    status, html, _ = await open_link(first, **{"Accept-Language": "en"})
    assert status == 410 and "expired" in html
    assert (await open_link(second))[0] == 200

    assert (await proxy.admin("DELETE", "/admin/clients/acme/portal-links"))[0] == 204
    assert (await open_link(second))[0] == 404  # revoked with every other link
    third = (await link(proxy, "acme"))["url"]
    assert (await open_link(third))[0] == 200  # a new link works at once
    assert (await proxy.admin("DELETE", "/admin/clients/nobody/portal-links"))[0] == 404


async def test_the_admin_api_refuses_bad_link_requests_and_writes_nothing(proxy: Harness) -> None:
    await proxy.new_client("acme")
    for body, param in (
        ({"expires_in_s": 10}, "expires_in_s"),
        ({"expires_in_s": 10**9}, "expires_in_s"),
        ({"expires_in_s": "3600"}, "expires_in_s"),
        ({"expires_in_s": True}, "expires_in_s"),
        ({"expires": 3600}, "expires"),
    ):
        status, error = await proxy.admin("POST", "/admin/clients/acme/portal-links", body)
        assert status == 422 and error["error"]["param"] == param, (body, error)
    status, error = await proxy.admin("POST", "/admin/clients/acme/portal-links", [1])
    assert status == 400
    status, error = await proxy.admin("POST", "/admin/clients/nobody/portal-links", {})
    assert status == 404 and error["error"]["code"] == "not_found"
    status, _ = await proxy.admin("POST", "/admin/clients/acme/portal-links", {}, token="wrong")
    assert status == 401


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_listed_origins_may_frame_the_portal_and_links_use_the_public_url(
    make_proxy: Callable[..., Awaitable[Harness]],
) -> None:
    proxy = await make_proxy(
        portal_frame_ancestors=["https://app.example.com", "https://*.example.org"],
        public_url="https://meter.example.com/tm",
    )
    await proxy.new_client("acme")
    made = await link(proxy, "acme")
    assert made["url"].startswith("https://meter.example.com/tm/portal/acme.")
    status, _, headers = await open_link(proxy.url + made["url"].removeprefix("https://meter.example.com/tm"))
    assert status == 200
    policy = headers["Content-Security-Policy"]
    assert "frame-ancestors https://app.example.com https://*.example.org;" in policy
    assert "X-Frame-Options" not in headers
    # The dashboard is still framed by no one.
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/dashboard/login") as resp:
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_a_link_token_is_never_logged_even_when_its_page_fails(
    proxy: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    await proxy.new_client("acme")
    url = (await link(proxy, "acme"))["url"]
    ops = proxy.server.app[OPERATIONS]

    async def broken(client_id: str, limit: int) -> None:
        raise RuntimeError("the events cannot be read")

    monkeypatch.setattr(ops, "events", broken)
    with caplog.at_level(logging.DEBUG):
        status, html, _ = await open_link(url, **{"Accept-Language": "en"})
    assert status == 500 and "Something went wrong" in html and "RuntimeError" not in html
    signature = url.rsplit(".", 1)[1]
    # taximeter's own logs (``serve`` runs with aiohttp's access log off).
    ours = [r for r in caplog.records if r.name.startswith("taximeter")]
    assert any(getattr(r, "path", None) == "/portal/…" for r in ours)
    assert all(signature not in r.getMessage() + str(r.__dict__) for r in ours)


async def test_the_dashboard_makes_and_revokes_links(proxy: Harness, operator: Browser) -> None:
    await proxy.new_client("acme", mode="tokens", token_limit=1000)
    await operator.get("/dashboard/clients/acme")
    page = await operator.post("/dashboard/clients/acme/portal-links", {"expires_in_s": "86400"})
    assert page.status == 201
    found = re.search(r'id="portal-link" class="key" value="([^"]+)"', page.text)
    assert found is not None and found.group(1).startswith(f"{proxy.url}/portal/acme.")
    assert "valid until 3/11/26, 3:00" in page.plain()  # a day after the fake clock's 15:00
    assert (await open_link(found.group(1)))[0] == 200
    page = await operator.post("/dashboard/clients/acme/portal-links", {"expires_in_s": "soon"})
    assert page.status == 422 and "expires_in_s must be whole seconds" in page.plain()

    await operator.get("/dashboard/clients/acme")
    page = await operator.post("/dashboard/clients/acme/portal-links/revoke")
    assert (page.status, page.location) == (303, "/dashboard/clients/acme?done=portal-revoked#portal")
    assert (await open_link(found.group(1)))[0] == 404


# -- the pages in Portuguese ----------------------------------------------------------


async def test_a_portuguese_browser_gets_portuguese_pages_with_brazilian_numbers(
    proxy: Harness, browsers: Callable[[], Browser]
) -> None:
    key = await proxy.new_client("acme", mode="both", token_limit=10_000, cost_limit="500")
    for _ in range(2):
        await chat(proxy, key)
    browser = browsers()
    browser.http.headers["Accept-Language"] = "pt-BR,pt;q=0.9,en;q=0.8"
    await browser.login()
    page = await browser.get("/dashboard")
    assert '<html lang="pt-BR">' in page.text
    text = page.plain()
    assert "Clientes" in text and "Visão geral" in text and "Novo cliente" in text
    assert "3.000 / 10.000" in text and "30,0%" in text  # 2 calls of 1,500 tokens
    assert f"R$ {str((2 * CALL_BRL).quantize(Decimal('0.01'))).replace('.', ',')} / R$ 500,00" in text
    page = await browser.get("/dashboard/clients/acme")
    assert "Salvar orçamento" in page.plain() and "Portal do cliente" in page.plain()
    page = await browser.get("/dashboard/usage")
    assert "Gasto por dia" in page.plain() and "requisições" in page.plain()

    # The switch: English from now on, kept in a cookie, whatever the browser prefers.
    page = await browser.get("/dashboard?lang=en")
    assert '<html lang="en-US">' in page.text and "New client" in page.plain()
    assert "3,000 / 10,000" in page.plain()
    page = await browser.get("/dashboard/usage")
    assert "Spend per day" in page.plain()
    page = await browser.get("/dashboard?lang=pt-BR")
    assert "Novo cliente" in page.plain()


async def test_the_portal_speaks_its_clients_language(proxy: Harness) -> None:
    await proxy.new_client("acme", mode="tokens", token_limit=1000)
    url = (await link(proxy, "acme"))["url"]
    # No Accept-Language: the usual locale of the client's currency (BRL: pt_BR).
    status, html, _ = await open_link(url)
    assert status == 200 and '<html lang="pt-BR">' in html and "Uso e orçamento" in html
    status, html, _ = await open_link(url, **{"Accept-Language": "en-US"})
    assert '<html lang="en-US">' in html and "Usage and budget" in html
    status, html, _ = await open_link(url + "?lang=pt-BR", **{"Accept-Language": "en-US"})
    assert "Uso e orçamento" in html
    status, html, _ = await open_link(url[:-3] + "abc", **{"Accept-Language": "pt-BR"})
    assert (status == 404 and "Link inválido" in html) or "não é válido" in html


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_the_locale_setting_decides_over_the_browser(
    make_proxy: Callable[..., Awaitable[Harness]],
) -> None:
    proxy = await make_proxy(locale="pt_BR")
    await proxy.new_client("acme")
    url = (await link(proxy, "acme"))["url"]
    status, html, _ = await open_link(url, **{"Accept-Language": "en-US"})
    assert status == 200 and "Uso e orçamento" in html
    status, html, _ = await open_link(url + "?lang=en", **{"Accept-Language": "en-US"})
    assert "Usage and budget" in html  # the reader's own choice still wins


@pytest.mark.slow
async def test_the_cli_makes_a_link_the_running_proxy_opens_and_revokes_them(
    proxy: Harness, backend: dict[str, str], tmp_path: Path, clock: FakeClock
) -> None:
    clock.set(datetime.now(UTC))  # the CLI signs on the real clock: so does the proxy here
    await proxy.new_client("acme", mode="tokens", token_limit=1000)
    cli = cli_on({**backend, "public_url": proxy.url}, tmp_path)
    out = (await cli("portal-link", "acme", "--expires", "2h")).splitlines()
    assert out[0].startswith(f"{proxy.url}/portal/acme.") and out[1].startswith("expires ")
    expires = datetime.fromisoformat(out[1].removeprefix("expires "))
    assert abs((expires - datetime.now(UTC)).total_seconds() - 7200) < 60
    assert (await open_link(out[0]))[0] == 200
    await cli("portal-link", "acme", "--revoke")
    assert (await open_link(out[0]))[0] == 404
