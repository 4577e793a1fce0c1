"""`taximeter apply`: declared clients and budgets made so, idempotently."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from taximeter.proxy.cli.apply import apply_file
from taximeter.proxy.errors import InvalidInput
from taximeter.proxy.operations import Operations
from taximeter.proxy.settings import ConfigError
from taximeter.store.base import Store

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "taximeter.example.toml"


def ops(store: Store) -> Operations:
    return Operations(store, timezone="UTC", currency="BRL", clock=lambda: datetime(2026, 3, 10, tzinfo=UTC))


async def test_apply_twice_changes_nothing_the_second_time(store: Store) -> None:
    operations = ops(store)
    first = await apply_file(operations, EXAMPLE, dry_run=False)
    assert first == [
        "create client acme (Acme Ltd)",
        "set limits acme: per-user, rpm, parallel",
        "set budget acme: both, 5,000,000 tokens and 500.00 BRL monthly (America/Sao_Paulo)",
        "create client voicebot (Voice bot (soft budget))",
        "set budget voicebot: cost, 120 BRL daily (UTC), soft",
    ]
    assert await apply_file(operations, EXAMPLE, dry_run=False) == []
    state = await store.get_budget("acme", operations.clock())
    assert state is not None and (state.config.cost_limit, state.config.token_limit) == (
        Decimal("500.00"),
        5_000_000,
    )
    acme = await store.get_client("acme")
    assert acme is not None and [(x.name, x.metric, x.limit) for x in acme.terms.limits] == [
        ("per-user", "cost", 2 * 10**9),  # nanos of the client's currency
        ("rpm", "requests", 60),
        ("parallel", "concurrent", 8),
    ]


async def test_dry_run_writes_nothing_and_changes_are_minimal(store: Store, tmp_path: Path) -> None:
    operations = ops(store)
    await apply_file(operations, EXAMPLE, dry_run=False)
    changed = tmp_path / "ops.toml"
    text = await asyncio.to_thread(EXAMPLE.read_text)
    edited = text.replace('cost_limit = "500.00"', 'cost_limit = "750"').replace('"Acme Ltd"', '"Acme"')
    await asyncio.to_thread(changed.write_text, edited)
    planned = await apply_file(operations, changed, dry_run=True)
    assert planned == [
        "rename client acme: 'Acme Ltd' -> 'Acme'",
        "update budget acme: both, 5,000,000 tokens and 750 BRL monthly (America/Sao_Paulo)",
    ]
    assert (await store.get_client("acme")).name == "Acme Ltd"  # type: ignore[union-attr]
    assert await apply_file(operations, changed, dry_run=False) == planned
    assert await apply_file(operations, changed, dry_run=False) == []


async def test_a_bad_declaration_writes_nothing(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    declared = '[[clients]]\nid = "ok"\n\n[[clients]]\nid = "broken"\n[clients.budget]\nmode = "tokens"\n'
    await asyncio.to_thread(bad.write_text, declared)
    with pytest.raises(InvalidInput, match=r"broken: budget\.token_limit"):
        await apply_file(ops(store), bad, dry_run=False)
    assert await store.list_clients() == []
    await asyncio.to_thread(bad.write_text, '[[clients]]\nidd = "typo"\n')
    with pytest.raises(ConfigError, match=r"clients\.0\.id: Field required"):
        await apply_file(ops(store), bad, dry_run=False)
