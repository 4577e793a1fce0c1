"""Builders of test data: usage events, budgets, reservations, clients and keys.

Each returns a plain taximeter value with the defaults most tests share (client
``acme``, a gpt-4o chat call, BRL at 5.0 per USD, 10 March 2026 15:00 UTC),
so a test names only what matters to it. Clients and keys made through the
admin API or the CLI are ``Harness.new_client`` and ``Deployment.new_client``.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from taximeter.pricing.budgets import period_bounds
from taximeter.pricing.models import ApiKey, BudgetConfig, BudgetState, Client, Reservation, UsageEvent
from taximeter.pricing.money import to_nanos

if TYPE_CHECKING:
    from taximeter.store.base import Store

S = TypeVar("S", bound="Store")

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
RATE = Decimal(5)  # BRL per USD, the default exchange_rate

_ids = itertools.count()
_STATE_FIELDS = {f for f in BudgetState.__dataclass_fields__ if f != "config"}


def usage_event(request_id: str | None = None, when: datetime = T0, **fields: Any) -> UsageEvent:
    """A chat event of client acme in BRL at 5.0, with ``fields`` replaced
    (a fresh request id when none is given)."""
    values: dict[str, Any] = {
        "request_id": request_id or f"req_{next(_ids)}",
        "client_id": "acme",
        "api_type": "chat",
        "model": "gpt-4o",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "created_at": when,
        "currency": "BRL",
        "exchange_rate": RATE,
    }
    values.update(fields)
    return UsageEvent(**values)


def estimated_event(request_id: str | None = None, when: datetime = T0, **fields: Any) -> UsageEvent:
    """The event a reservation carries: the call's estimate, flagged
    ``estimated``, status 0 (no answer yet)."""
    return usage_event(request_id, when, **{"status": 0, "estimated": True, **fields})


def tts_estimate(request_id: str, when: datetime, client_id: str = "acme") -> UsageEvent:
    """A speech call's estimate: 1,000 characters of tts-1 ($15 per 1M
    characters: $0.015, R$0.075 at 5 BRL per USD)."""
    return estimated_event(
        request_id,
        when,
        client_id=client_id,
        api_type="tts",
        model="tts-1",
        endpoint="/v1/audio/speech",
        characters=1000,
        cost_usd=Decimal("0.015"),
        cost=Decimal("0.075"),
    )


def reservation(event: UsageEvent, expires_at: datetime = T0 + timedelta(minutes=10)) -> Reservation:
    """What ``event``'s call holds against its budget (its cost) until ``expires_at``."""
    return Reservation(event, to_nanos(event.cost), expires_at)


def budget_config(client_id: str = "acme", **fields: Any) -> BudgetConfig:
    """A daily budget of both metrics in UTC and BRL: 1,000 tokens and 1.00,
    with ``fields`` replaced."""
    values: dict[str, Any] = {
        "client_id": client_id,
        "mode": "both",
        "period": "daily",
        "timezone": "UTC",
        "currency": "BRL",
        "token_limit": 1000,
        "cost_limit": Decimal("1.00"),
    }
    values.update(fields)
    return BudgetConfig(**values)


def unlimited_budget(client_id: str = "acme") -> BudgetConfig:
    """A lifetime budget no test reaches, so every event counts and none is refused."""
    return budget_config(client_id, period="none", token_limit=10**15, cost_limit=Decimal(10**9))


def budget_state(config: BudgetConfig | None = None, **fields: Any) -> BudgetState:
    """``config`` (or ``budget_config()``) with its counters; ``fields`` name
    either (``tokens_used=999``, ``token_limit=50``...). The period is the one
    holding T0 unless ``period_start`` is given."""
    counters = {name: fields.pop(name) for name in list(fields) if name in _STATE_FIELDS}
    if config is None:
        config = budget_config(**fields)
    elif fields:
        config = replace(config, **fields)
    counters.setdefault("period_start", period_bounds(config.period, config.timezone, T0)[0])
    return BudgetState(config=config, **counters)


def client(client_id: str = "acme", name: str | None = None, created_at: datetime = T0) -> Client:
    return Client(client_id, name or client_id.title(), created_at)


def api_key(
    prefix: str = "tm_abcdefghi", client_id: str = "acme", key_hash: str = "hash-1", **fields: Any
) -> ApiKey:
    """A stored key (its display prefix and a hash), made at T0."""
    return ApiKey(prefix, client_id, key_hash, **{"created_at": T0, **fields})


async def add_client(
    store: Store, client_id: str = "acme", *, budget: BudgetConfig | None = None, at: datetime = T0
) -> None:
    """Create ``client_id`` (named after it) in ``store``, with ``budget`` if given."""
    made = client(client_id, created_at=at)
    await store.create_client(made.id, made.name, at)
    if budget is not None:
        await store.put_budget(budget, at)


async def seeded(store: S) -> S:
    """``store`` migrated, with client acme and a budget it never reaches."""
    await store.migrate()
    await add_client(store, budget=unlimited_budget())
    return store
