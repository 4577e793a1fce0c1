"""A browser for the dashboard and portal tests over HTTP: cookies, CSRF
tokens and pages as a browser keeps them, without a browser."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.support.harness import ADMIN_TOKEN

__all__ = ["NBSP", "Browser", "Page"]

NBSP = "\u00a0"


@dataclass
class Page:
    status: int
    text: str
    headers: Any

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", ""))

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]*)"', self.text)
        assert found, "the page has no form with a CSRF token"
        return found.group(1)

    def plain(self) -> str:
        """The text without tags, spaces collapsed (NBSP as a space)."""
        text = re.sub(r"<[^>]+>", " ", self.text).replace(NBSP, " ")
        return re.sub(r"\s+", " ", text)


@dataclass
class Browser:
    """Cookies and CSRF tokens as a browser would keep them; no redirects
    followed. It asks for English pages (numbers in en_US), as a browser
    set to English does; the Portuguese pages have tests of their own."""

    base: str
    http: aiohttp.ClientSession = field(
        default_factory=lambda: aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Accept-Language": "en-US,en;q=0.9"}
        )
    )
    last: Page | None = None

    async def get(self, path: str) -> Page:
        async with self.http.get(self.base + path, allow_redirects=False) as resp:
            self.last = Page(resp.status, await resp.text(), resp.headers)
        return self.last

    async def post(self, path: str, data: dict[str, str] | None = None, *, csrf: str | None = None) -> Page:
        """Post a form; with the CSRF token of the last page unless ``csrf`` is given."""
        form = dict(data or {})
        if csrf is None and self.last is not None and 'name="csrf"' in self.last.text:
            csrf = self.last.csrf()
        if csrf is not None:
            form["csrf"] = csrf
        async with self.http.post(self.base + path, data=form, allow_redirects=False) as resp:
            self.last = Page(resp.status, await resp.text(), resp.headers)
        return self.last

    async def login(self, token: str = ADMIN_TOKEN) -> Page:
        await self.get("/dashboard/login")
        return await self.post("/dashboard/login", {"token": token, "next": "/dashboard"})

    def session_cookie(self) -> str:
        for cookie in self.http.cookie_jar:
            if cookie.key == "taximeter_session":
                return cookie.value
        raise AssertionError("no session cookie")

    async def close(self) -> None:
        await self.http.close()
