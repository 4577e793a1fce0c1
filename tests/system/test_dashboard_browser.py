"""The dashboard in a real browser: Debian's Chromium, headless, driven by
Playwright (launched by its path; nothing downloads a browser). Postgres and
Redis behind the proxy, the official SDK making the calls. Each step asserts
on the page and saves a screenshot under test-artifacts/dashboard/."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import openai
import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.support.availability import unavailable
from tests.support.blocking import allow_known_blocking
from tests.support.clock import FakeClock
from tests.support.fake_upstream import CHAT
from tests.support.harness import ADMIN_TOKEN, Harness

CHROMIUM = os.environ.get("TAXIMETER_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
CALL_TOKENS = CHAT["prompt"] + CHAT["completion"]  # 1500 per chat call
# Level colours of the stylesheet: yellow (warning) and red (exceeded).
YELLOW, RED = "rgb(212, 160, 23)", "rgb(209, 52, 58)"

pytestmark = [
    pytest.mark.slow,  # starts a browser
    pytest.mark.parametrize("backend", ["production"], indirect=True),
]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Playwright's client reads files on the event loop (it is the test's
    tool, not the proxy); the proxy's own code, on the same loop, is still checked."""
    with blockbuster_ctx(["taximeter.proxy", "taximeter.store", "taximeter.pricing"]) as detector:
        allow_known_blocking(detector)
        yield detector


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    if not await asyncio.to_thread(Path(CHROMIUM).exists):
        unavailable(f"Chromium is not installed at {CHROMIUM}", "apt-get install chromium")
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        await browser.close()


class Steps:
    """Numbered screenshots, one per step."""

    def __init__(self, page: Page, prefix: str) -> None:
        self.page, self.prefix, self.n = page, prefix, 0

    async def shot(self, name: str) -> None:
        self.n += 1
        await self.page.screenshot(path=ARTIFACTS / f"{self.prefix}-{self.n:02d}-{name}.png", full_page=True)


async def chat(proxy: Harness, key: str, times: int = 1) -> None:
    client = proxy.sdk(key)
    for _ in range(times):
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])


async def log_in(page: Page, url: str, heading: str = "Clients") -> None:
    await page.goto(f"{url}/dashboard")
    await expect(page).to_have_url(f"{url}/dashboard/login?next=/dashboard")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text(heading)


def card(page: Page, client_id: str) -> object:
    return page.locator(f'article.card[data-client="{client_id}"]')


async def test_an_operator_runs_a_client_from_the_browser(
    make_proxy: Callable[..., Awaitable[Harness]], chromium: Browser
) -> None:
    proxy = await make_proxy()
    context = await chromium.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=proxy.url)
    page = await context.new_page()
    steps = Steps(page, "flow")

    await page.goto(f"{proxy.url}/dashboard")
    await expect(page.locator("#token")).to_be_visible()
    await steps.shot("login")
    await page.fill("#token", "a wrong token")
    await page.click("button[type=submit]")
    await expect(page.locator(".field-error")).to_have_text("Wrong admin token.")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Clients")
    await steps.shot("empty-overview")

    # A client and its key.
    await page.fill("#new-id", "acme")
    await page.fill("#new-name", "Acme Inc.")
    await page.get_by_role("button", name="Create client", exact=True).click()
    await expect(page.locator(".notice")).to_contain_text("Client created")
    await page.get_by_role("button", name="Create key", exact=True).click()
    key = await page.locator("#new-key").input_value()
    assert key.startswith("tm_")
    await page.click("button.copy")
    await expect(page.locator("button.copy")).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == key
    await steps.shot("new-key")
    await page.reload()  # a reload re-posts nothing and shows no key
    assert key not in await page.content()

    # A budget of 10 calls' tokens, entered as an operator in Brazil would.
    await page.select_option("#mode", "both")
    await page.fill("#token_limit", f"{10 * CALL_TOKENS:_}".replace("_", "."))
    await page.fill("#cost_limit", "abc")
    await page.get_by_role("button", name="Save budget", exact=True).click()
    await expect(page.locator("#cost_limit-error")).to_be_visible()
    await steps.shot("budget-error")
    await page.fill("#cost_limit", "500,00")
    await page.fill("#timezone", "America/Sao_Paulo")
    await page.get_by_role("button", name="Save budget", exact=True).click()
    await expect(page.locator(".notice")).to_have_text("Budget saved.")
    await expect(card(page, "acme").locator(".metric-figures").first).to_have_text("0 / 15,000")
    await expect(card(page, "acme").locator(".metric-figures").nth(1)).to_have_text("R$0.00 / R$500.00")

    # Traffic until the card turns yellow (80%), then red and paused (100%).
    await chat(proxy, key, times=8)
    await page.goto(f"{proxy.url}/dashboard")
    acme = card(page, "acme")
    await expect(acme).to_have_attribute("data-level", "warning")
    await expect(acme.locator(".metric-percent").first).to_have_text("80.0%")
    fill = acme.locator("rect.fill").first
    assert await fill.evaluate("e => getComputedStyle(e).fill") == YELLOW
    await steps.shot("yellow")

    await chat(proxy, key, times=2)
    with pytest.raises(openai.RateLimitError):
        await chat(proxy, key)
    await page.reload()
    await expect(acme).to_have_attribute("data-level", "exceeded")
    await expect(acme.locator(".badge.paused")).to_have_text("paused · token limit")
    assert await fill.evaluate("e => getComputedStyle(e).fill") == RED
    await steps.shot("red-paused")

    # Resume lifts the pause, but the limit still holds (and the page says so);
    # a higher limit lets calls through.
    await acme.locator("h2 a").click()
    await page.get_by_role("button", name="Resume", exact=True).click()
    await expect(page.locator(".notice")).to_contain_text("Resumed, but a limit is still reached")
    await expect(page.locator(".badge.paused")).to_have_text("paused · token limit")
    with pytest.raises(openai.RateLimitError):
        await chat(proxy, key)
    await page.fill("#token_limit", "30000")
    await page.get_by_role("button", name="Save budget", exact=True).click()
    await expect(page.locator(".notice")).to_have_text("Budget saved.")
    await expect(page.locator(".badge.paused")).to_have_count(0)
    await chat(proxy, key)
    await page.reload()
    await expect(page.locator("article.card")).to_have_attribute("data-level", "ok")
    await expect(page.locator("table.events tbody tr")).to_have_count(11)
    await steps.shot("resumed")

    # Usage, charted without any network beyond the proxy.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    await page.get_by_role("link", name="Usage", exact=True).click()
    await expect(page.locator("svg.chart g.stack")).to_have_count(30)  # a column a day
    await expect(page.locator("svg.chart rect.series-chat")).to_have_count(1)  # every call today
    await expect(page.locator("strong.total")).to_contain_text("R$")
    assert all(u.startswith(proxy.url) for u in requests), requests
    await steps.shot("usage")

    # Phone width: nothing wider than the screen.
    await page.set_viewport_size({"width": 375, "height": 740})
    for path in ("/dashboard", "/dashboard/clients/acme", "/dashboard/usage"):
        await page.goto(proxy.url + path)
        wide = await page.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 376)"
            ".map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"
        )
        assert await page.evaluate("document.documentElement.scrollWidth") <= 375, (path, wide[:8])
        await steps.shot("phone-" + (path.rsplit("/", 1)[-1] or "overview"))
    await page.set_viewport_size({"width": 1280, "height": 900})

    # Log out: every page asks for a login again.
    await page.goto(f"{proxy.url}/dashboard")
    await page.get_by_role("button", name="Log out", exact=True).click()
    await expect(page.locator(".notice")).to_have_text("You have logged out.")
    for path in ("/dashboard", "/dashboard/clients/acme", "/dashboard/usage"):
        await page.goto(proxy.url + path)
        await expect(page.locator("#token")).to_be_visible()
    await steps.shot("logged-out")
    await context.close()
    await proxy.assert_ledger_matches_counters()


async def test_every_page_works_without_javascript(
    make_proxy: Callable[..., Awaitable[Harness]], chromium: Browser
) -> None:
    proxy = await make_proxy()
    await proxy.new_client("acme", mode="tokens", token_limit=100_000)
    context = await chromium.new_context(
        locale="en-US", java_script_enabled=False, viewport={"width": 1024, "height": 800}
    )
    page = await context.new_page()
    steps = Steps(page, "nojs")
    await log_in(page, proxy.url)
    await page.fill("#q", "acm")
    await page.get_by_role("button", name="Filter", exact=True).click()
    await expect(page.locator("article.card")).to_have_count(1)
    await page.click("article.card h2 a")
    await page.get_by_role("button", name="Create key", exact=True).click()
    key = await page.locator("#new-key").input_value()
    await expect(page.locator("button.copy")).to_be_hidden()  # the copy button needs a script
    await chat(proxy, key)
    await page.get_by_role("button", name="Pause", exact=True).click()
    await expect(page.locator(".badge.paused")).to_have_text("paused · manual")
    with pytest.raises(openai.RateLimitError):
        await chat(proxy, key)
    await page.get_by_role("button", name="Resume", exact=True).click()
    await chat(proxy, key)
    await page.get_by_role("link", name="Usage", exact=True).click()
    await expect(page.locator("svg.chart g.stack")).to_have_count(30)
    await steps.shot("usage")
    await context.close()


async def test_a_brazilian_operator_gives_a_client_its_portal(
    make_proxy: Callable[..., Awaitable[Harness]], chromium: Browser, clock: FakeClock
) -> None:
    """The dashboard in pt-BR with a forecast that says when a budget runs out;
    the portal from a link, in the reader's language, with no admin data;
    an expired link and a revoked one refused."""
    proxy = await make_proxy()
    key = await proxy.new_client("acme", mode="both", token_limit=5 * CALL_TOKENS, cost_limit="500")
    await proxy.sdk(key).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Oi"}], user="+5511988887777"
    )
    await chat(proxy, key, times=3)  # 80% of the tokens, nine days into March
    context = await chromium.new_context(locale="pt-BR", viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    steps = Steps(page, "pt-BR")
    await log_in(page, proxy.url, heading="Clientes")
    acme = card(page, "acme")
    await expect(acme.locator(".metric-figures").first).to_have_text("6.000 / 7.500")
    await expect(acme.locator(".forecast.runs-out")).to_contain_text("neste ritmo")
    await expect(acme.locator(".forecast.runs-out")).to_contain_text("esgota em 13/03/2026")
    await steps.shot("overview")

    await acme.locator("h2 a").click()
    await page.select_option("#expires_in_s", "604800")
    await page.get_by_role("button", name="Gerar link", exact=True).click()
    await expect(page.locator("#portal")).to_contain_text("Novo link, válido até 17/03/2026")
    link = await page.locator("#portal-link").input_value()
    assert link.startswith(f"{proxy.url}/portal/acme.")
    await steps.shot("portal-link")

    # The client's people, in English: their figures and nothing of the operator's.
    reader_context = await chromium.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    reader = await reader_context.new_page()
    shots = Steps(reader, "portal")
    await reader.goto(link)
    await expect(reader.locator("h1")).to_have_text("Usage and budget")
    await expect(reader.locator(".forecast.runs-out")).to_contain_text("runs out 3/13/26")
    await expect(reader.locator("svg.chart g.stack")).to_have_count(30)
    await expect(reader.locator("table.events tbody tr")).to_have_count(4)
    await expect(reader.locator("body")).to_contain_text("+5511988887777")
    html = await reader.content()
    for admin_only in ("tm_", "Log out", "/dashboard/clients", "<form", "Revoke", "cost_usd"):
        assert admin_only not in html, admin_only
    await shots.shot("english")
    await reader.get_by_role("link", name="Português", exact=True).click()
    await expect(reader.locator("h1")).to_have_text("Uso e orçamento")
    await shots.shot("portugues")

    clock.advance(days=8)  # past the link's week
    await reader.goto(link)
    await expect(reader.locator("h1")).to_have_text("Link expirado")
    await shots.shot("expired")

    await log_in(page, proxy.url, heading="Clientes")  # the week outlived the session too
    await page.goto(f"{proxy.url}/dashboard/clients/acme")
    await page.select_option("#expires_in_s", "86400")
    await page.get_by_role("button", name="Gerar link", exact=True).click()
    fresh = await page.locator("#portal-link").input_value()
    await reader.goto(fresh)
    await expect(reader.locator("h1")).to_have_text("Uso e orçamento")
    await page.get_by_role("button", name="Revogar todos os links", exact=True).click()
    await expect(page.locator(".notice")).to_have_text(
        "Todos os links do portal deste cliente foram revogados."
    )
    await reader.goto(fresh)
    await expect(reader.locator("h1")).to_have_text("Link inválido")
    await shots.shot("revoked")
    await reader_context.close()
    await context.close()
