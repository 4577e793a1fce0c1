"""Fixtures of the HTTP tests of the dashboard and the portal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from tests.support.browser import Browser
from tests.support.harness import Harness


@pytest.fixture
async def browsers(proxy: Harness) -> AsyncIterator[Callable[[], Browser]]:
    opened: list[Browser] = []

    def open_browser() -> Browser:
        opened.append(Browser(proxy.url))
        return opened[-1]

    yield open_browser
    for browser in opened:
        await browser.close()


@pytest.fixture
async def operator(browsers: Callable[[], Browser]) -> Browser:
    browser = browsers()
    page = await browser.login()
    assert (page.status, page.location) == (303, "/dashboard")
    return browser
