"""Budget gauges follow every change (spec section 9), on both backends: a
pause, a resume, a raised limit, a reset, a period rolling over and a deleted
budget - made here, or by another process (the CLI) while no call comes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from taximeter.proxy.gateway.sweeper import sweep
from taximeter.proxy.services import GAUGES
from tests.http.test_changes_elsewhere import cli_on
from tests.support.clock import FakeClock
from tests.support.fake_upstream import CHAT
from tests.support.harness import Harness
from tests.support.metrics import samples, scrape
from tests.support.waiting import eventually

CALL_TOKENS = CHAT["prompt"] + CHAT["completion"]


async def gauges(proxy: Harness, client: str = "acme") -> dict[str, float]:
    """The client's budget gauges as scraped (once this process's calls are
    recorded): absent ones are left out."""
    await proxy.services.meter.ledger.flush()
    _, text = await scrape(proxy.url)
    found = {}
    for (name, labels), number in samples(text).items():
        shown = dict(labels)
        if shown.get("client") != client:
            continue
        if name == "taximeter_budget_paused":
            found["paused"] = number
        elif name == "taximeter_budget_used_ratio":
            found[shown["metric"]] = number
    return found


async def test_gauges_follow_every_change_made_here(proxy: Harness, clock: FakeClock) -> None:
    key = await proxy.new_client("acme", mode="tokens", token_limit=4 * CALL_TOKENS)
    sdk = proxy.sdk(key)
    await sdk.chat.completions.create(model="gpt-4o", messages=[])
    shown = await gauges(proxy)
    assert (shown["tokens"], shown["paused"]) == (0.25, 0)
    await proxy.admin("POST", "/admin/budgets/acme/pause")
    assert (await gauges(proxy))["paused"] == 1
    await proxy.admin("POST", "/admin/budgets/acme/resume")
    assert (await gauges(proxy))["paused"] == 0
    status, _ = await proxy.admin(
        "PUT", "/admin/budgets/acme", {"mode": "tokens", "token_limit": 8 * CALL_TOKENS}
    )
    assert status == 200
    assert (await gauges(proxy))["tokens"] == 0.125  # raised: the same use is a smaller share
    await proxy.admin("POST", "/admin/budgets/acme/reset")
    assert (await gauges(proxy))["tokens"] == 0
    await sdk.chat.completions.create(model="gpt-4o", messages=[])
    assert (await gauges(proxy))["tokens"] == 0.125
    clock.set(
        datetime(clock.now.year + (clock.now.month == 12), clock.now.month % 12 + 1, 1, 0, 1, tzinfo=UTC)
    )
    await sweep(proxy.services.meter, proxy.app[GAUGES].follow)  # the period rolls over

    async def rolled() -> bool:
        return (await gauges(proxy))["tokens"] == 0

    await eventually(rolled, 10, what="the gauge of a new period")
    await proxy.admin("DELETE", "/admin/budgets/acme")
    assert await gauges(proxy) == {}  # deleted: its series go


@pytest.mark.slow
async def test_gauges_follow_a_cli_change_with_no_call(
    make_proxy: Any, backend: dict[str, str], tmp_path: Path, clock: FakeClock
) -> None:
    proxy: Harness = await make_proxy(sweep_interval_s=0.1)
    clock.set(datetime.now(UTC))
    cli = cli_on(backend, tmp_path)
    await proxy.new_client("acme", mode="tokens", token_limit=4 * CALL_TOKENS)
    assert (await gauges(proxy))["paused"] == 0
    await cli("budgets", "pause", "acme")

    async def paused() -> bool:
        return (await gauges(proxy)).get("paused") == 1

    await eventually(paused, 10, what="the CLI's pause on the gauge")
    await cli("budgets", "delete", "acme")

    async def gone() -> bool:
        return await gauges(proxy) == {}

    await eventually(gone, 10, what="the deleted budget's series gone")
